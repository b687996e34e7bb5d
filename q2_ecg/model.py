"""Q2 models: a 1-D ResNet beat classifier, and the same with a transformer over neighbouring
beats.

Both take a chunk of L consecutive beats: waveforms (B, L, C, W) float32 of amplitude-scaled
signal at 128 Hz (channel 0 the beat, channel 1 its record's median beat) and every RR feature
of the beat table (B, L, len(beats.RR_NAMES)), of which the model reads the set its config
names (beats.RR_SETS). The plain ResNet uses L = 1.
1-D ResNet: He et al. 2016, as applied to ECG by Hannun et al. 2019. Context transformer:
Vaswani et al. 2017; SVEB is defined relative to the neighbouring beats (premature against the
running sinus rhythm), so letting each beat attend to its neighbours is the natural next step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from q2_ecg.beats import RR_NAMES, RR_SETS


@dataclass
class BeatNetConfig:
    window: int = 256                 # samples per beat input
    channels: tuple = (32, 64, 128)   # per ResNet stage; each stage halves the length
    kernel: int = 7
    rr_set: str = "record"            # which RR features it reads (beats.RR_SETS)
    template: bool = True             # second input channel: the record's median beat
    embed: int = 64                   # width of a beat's token
    context: int = 1                  # L, beats per chunk
    context_layers: int = 0           # transformer layers over the chunk (0 = none)
    heads: int = 4
    dropout: float = 0.1
    n_classes: int = 3

    def __post_init__(self):
        if self.rr_set not in RR_SETS:
            raise ValueError(f"rr_set {self.rr_set!r}, expected one of {sorted(RR_SETS)}")

    @property
    def rr_names(self) -> tuple[str, ...]:
        return RR_SETS[self.rr_set]


class ResBlock1d(nn.Module):
    """(N, c_in, T) -> (N, c_out, T / stride): two convs with BatchNorm, ReLU, projected skip."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel, stride, pad, bias=False), nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv1d(c_out, c_out, kernel, 1, pad, bias=False), nn.BatchNorm1d(c_out))
        self.skip = (nn.Identity() if c_in == c_out and stride == 1 else nn.Sequential(
            nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class BeatEncoder(nn.Module):
    """(N, C, W) waveforms -> (N, embed): strided stem, ResNet stages, average + max pooling."""

    def __init__(self, cfg: BeatNetConfig):
        super().__init__()
        c = cfg.channels
        c_in = 2 if cfg.template else 1
        self.stem = nn.Sequential(nn.Conv1d(c_in, c[0], cfg.kernel, 2, cfg.kernel // 2, bias=False),
                                  nn.BatchNorm1d(c[0]), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*(ResBlock1d(c_in, c_out, cfg.kernel, 2)
                                      for c_in, c_out in zip((c[0],) + c[:-1], c)))
        self.out = nn.Linear(2 * c[-1], cfg.embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))                                   # (N, C, W / 2**(1+S))
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=1))


class RRNorm(nn.Module):
    """Standardise RR features with statistics of the training beats (stored as buffers)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def fit(self, rr: torch.Tensor) -> None:
        self.mean.copy_(rr.mean(0))
        self.std.copy_(rr.std(0).clamp_min(1e-3))

    def forward(self, rr: torch.Tensor) -> torch.Tensor:
        return (rr - self.mean) / self.std


class BeatClassifier(nn.Module):
    """(B, L, C, W) waveforms, (B, L, len(RR_NAMES)) RR -> (B, L, n_classes) logits, one per beat."""

    def __init__(self, cfg: BeatNetConfig):
        super().__init__()
        self.cfg = cfg
        n_rr = len(cfg.rr_names)
        self.register_buffer("rr_index", torch.tensor([RR_NAMES.index(n) for n in cfg.rr_names]),
                             persistent=False)
        self.encoder = BeatEncoder(cfg)
        self.rr_norm = RRNorm(n_rr)
        self.token = nn.Sequential(nn.Linear(cfg.embed + n_rr, cfg.embed), nn.GELU(),
                                   nn.Dropout(cfg.dropout))
        if cfg.context_layers:
            self.pos = nn.Parameter(torch.zeros(1, cfg.context, cfg.embed))
            nn.init.trunc_normal_(self.pos, std=0.02)
            layer = nn.TransformerEncoderLayer(cfg.embed, cfg.heads, 2 * cfg.embed, cfg.dropout,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            self.context = nn.TransformerEncoder(layer, cfg.context_layers,
                                                 enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(cfg.embed), nn.Linear(cfg.embed, cfg.n_classes))

    def fit_rr(self, rr: torch.Tensor) -> None:
        """Standardise with the training beats' RR features (n, len(RR_NAMES))."""
        self.rr_norm.fit(rr[:, self.rr_index])

    def embed(self, windows: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        """(B, L, C, W), (B, L, len(RR_NAMES)) -> (B, L, embed): each beat's token, what the
        head reads.

        Morphology and rhythm in one vector, after the context layers: what label-free
        test-time adaptation (q2_ecg.adapt) clusters a record's beats on.
        """
        b, length = windows.shape[:2]
        tokens = self.encoder(windows.flatten(0, 1)).reshape(b, length, -1)
        tokens = torch.cat([tokens, self.rr_norm(rr[..., self.rr_index])], dim=-1)
        tokens = self.token(tokens)                                      # (B, L, embed)
        if self.cfg.context_layers:
            tokens = self.context(tokens + self.pos[:, :length])
        return tokens

    def forward(self, windows: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(windows, rr))


MODELS = {
    "resnet": BeatNetConfig(),
    "context": BeatNetConfig(context=32, context_layers=2),
}


def build_model(**model_args) -> nn.Module:
    """Rebuild a model from the `model_args` stored in its checkpoint."""
    cfg = BeatNetConfig(**{**model_args, "channels": tuple(model_args.get("channels", (32, 64, 128)))})
    return BeatClassifier(cfg)


def model_args(name: str, **overrides) -> dict:
    return {**asdict(MODELS[name]), **{k: v for k, v in overrides.items() if v is not None}}
