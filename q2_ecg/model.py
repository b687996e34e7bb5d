"""Q2 models: a 1-D ResNet beat classifier, the same with a transformer over neighbouring beats,
and an autoencoder trained on normal beats only (its reconstruction error is an anomaly score).

All take a chunk of L consecutive beats: waveforms (B, L, C, W) float32 of amplitude-scaled
signal at 128 Hz (channel 0 the beat, channel 1 its record's median beat) and RR features
(B, L, F) (see beats.RR_NAMES). The plain ResNet uses L = 1.
1-D ResNet: He et al. 2016, as applied to ECG by Hannun et al. 2019. Context transformer:
Vaswani et al. 2017; SVEB is defined relative to the neighbouring beats (premature against the
running sinus rhythm), so letting each beat attend to its neighbours is the natural next step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from q2_ecg.beats import RR_NAMES

# channel 0 of a beat's input: the R-centred window, or (the ablation, which changes nothing
# else) the zero-padded split_by_beat segment; both keep the RR features and the template
REPRESENTATIONS = ("window", "segment")


@dataclass
class BeatNetConfig:
    window: int = 256                 # samples per beat input
    representation: str = "window"    # channel 0: "window" (R-centred) | "segment" (ablation)
    channels: tuple = (32, 64, 128)   # per ResNet stage; each stage halves the length
    kernel: int = 7
    rr_features: int = len(RR_NAMES)  # 0: waveform only
    template: bool = True             # second input channel: the record's median beat
    embed: int = 64                   # width of a beat's token
    context: int = 1                  # L, beats per chunk
    context_layers: int = 0           # transformer layers over the chunk (0 = none)
    heads: int = 4
    dropout: float = 0.1
    n_classes: int = 3
    autoencoder: bool = False
    latent: int = 16                  # autoencoder bottleneck

    def __post_init__(self):
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation {self.representation!r}, expected one of "
                             f"{REPRESENTATIONS}")


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
    """(B, L, C, W) waveforms, (B, L, F) RR -> (B, L, n_classes) logits, one per beat."""

    def __init__(self, cfg: BeatNetConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = BeatEncoder(cfg)
        self.rr_norm = RRNorm(cfg.rr_features)
        self.token = nn.Sequential(nn.Linear(cfg.embed + cfg.rr_features, cfg.embed), nn.GELU(),
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

    def embed(self, windows: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        """(B, L, C, W), (B, L, F) -> (B, L, embed): each beat's token, what the head reads.

        Morphology and rhythm in one vector, after the context layers: what label-free
        test-time adaptation (q2_ecg.adapt) clusters a record's beats on.
        """
        b, length = windows.shape[:2]
        tokens = self.encoder(windows.flatten(0, 1)).reshape(b, length, -1)
        if self.cfg.rr_features:
            tokens = torch.cat([tokens, self.rr_norm(rr)], dim=-1)
        tokens = self.token(tokens)                                      # (B, L, embed)
        if self.cfg.context_layers:
            tokens = self.context(tokens + self.pos[:, :length])
        return tokens

    def forward(self, windows: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(windows, rr))


class BeatAutoencoder(nn.Module):
    """Normal-beat autoencoder. (B, L, C, W), (B, L, F) -> anomaly score (B, L).

    The beat (given its record's median beat as a second channel) and the standardised RR
    features go through a 16-number bottleneck; a beat unlike the normal beats it was trained on
    (odd shape or odd timing) is reconstructed badly. Only the beat itself is reconstructed.
    """

    def __init__(self, cfg: BeatNetConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = BeatEncoder(cfg)
        self.rr_norm = RRNorm(cfg.rr_features)
        self.bottleneck = nn.Linear(cfg.embed + cfg.rr_features, cfg.latent)
        self.decoder = nn.Sequential(nn.Linear(cfg.latent, 256), nn.GELU(),
                                     nn.Linear(256, cfg.window + cfg.rr_features))

    def reconstruction_errors(self, windows: torch.Tensor, rr: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared errors (B, L) of the waveform and of the standardised RR features."""
        b, length, _, w = windows.shape
        rr = self.rr_norm(rr)
        z = self.bottleneck(torch.cat([self.encoder(windows.flatten(0, 1)),
                                       rr.reshape(b * length, -1)], dim=1))
        out = self.decoder(F.gelu(z)).reshape(b, length, -1)
        beat = windows[:, :, 0]
        return ((out[..., :w] - beat) ** 2).mean(-1), ((out[..., w:] - rr) ** 2).mean(-1)

    def forward(self, windows: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        wave, timing = self.reconstruction_errors(windows, rr)
        return wave + timing


MODELS = {
    "resnet": BeatNetConfig(),
    "context": BeatNetConfig(context=32, context_layers=2),
    "segment": BeatNetConfig(representation="segment"),
    "autoencoder": BeatNetConfig(autoencoder=True),
}


def build_model(**model_args) -> nn.Module:
    """Rebuild a model from the `model_args` stored in its checkpoint."""
    cfg = BeatNetConfig(**{**model_args, "channels": tuple(model_args.get("channels", (32, 64, 128)))})
    return BeatAutoencoder(cfg) if cfg.autoencoder else BeatClassifier(cfg)


def model_args(name: str, **overrides) -> dict:
    return {**asdict(MODELS[name]), **{k: v for k, v in overrides.items() if v is not None}}
