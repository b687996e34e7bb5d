"""Q1 models: a residual U-Net (2-D or 2.5-D input), the same U-Net with a transformer bottleneck,
and a PatchGAN critic.

U-Net: Ronneberger et al. 2015. Upsampling is bilinear interpolation followed by a 3x3
convolution: transposed convolutions left checkerboard artefacts on these images (Odena et al.
2016). GroupNorm instead of BatchNorm because batch statistics of MRI slices differ strongly
between near-empty edge slices and central ones, and GroupNorm does not depend on the batch.
Transformer bottleneck: TransUNet (Chen et al. 2021) idea, at 8x8 = 64 tokens so attention is
cheap; it lets every position see the whole slice (left-right symmetry, global tissue contrast).
PatchGAN: the conditional discriminator of pix2pix (Isola et al. 2017).
2.5-D input: the slice and its `neighbours` adjacent slices on each side (same patient and view)
as input channels, so the network sees through-plane context while predicting one slice; the
neighbours come from q1_mri.neighbours, which verifies the data's slice order first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    base_channels: int = 16     # channels at full resolution; doubled at each level down
    levels: int = 4             # resolutions 64, 32, 16, 8 for 64x64 input
    groups: int = 8             # GroupNorm groups
    transformer_layers: int = 0  # 0: plain U-Net; >0: transformer bottleneck
    heads: int = 4
    image_size: int = 64        # for the bottleneck's positional embedding
    neighbours: int = 0         # adjacent slices per side as extra input channels (0: 2-D)

    @property
    def in_channels(self) -> int:
        return 2 * self.neighbours + 1


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm + SiLU and a (1x1 if needed) skip. (N, c_in, H, W) -> (N, c_out, H, W)"""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out, groups), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), norm(c_out, groups))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.body(x) + self.skip(x))


class TransformerBottleneck(nn.Module):
    """Pre-norm transformer encoder over the H*W positions of the lowest feature map.

    (N, C, h, w) -> (N, C, h, w); a learned positional embedding per position.
    """

    def __init__(self, channels: int, size: int, layers: int, heads: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, size * size, channels))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(channels, heads, dim_feedforward=4 * channels,
                                           dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h * w != self.pos.shape[1]:
            raise ValueError(f"the transformer bottleneck was built for {self.pos.shape[1]} "
                             f"positions, got a {h}x{w} feature map: set image_size to the input size")
        tokens = x.flatten(2).transpose(1, 2) + self.pos            # (N, h*w, C)
        tokens = self.out_norm(self.encoder(tokens))
        return x + tokens.transpose(1, 2).reshape(n, c, h, w)        # residual around the block


class UNet(nn.Module):
    """T1 -> T2 translator. (N, C, H, W) normalised T1 -> (N, 1, H, W) normalised T2.

    C = 2 * neighbours + 1 channels: the slice to translate in the middle, its neighbours in
    slice order around it (C = 1 for the 2-D model). H and W must be divisible by
    2**(levels - 1). The images are skull-stripped, so the output is set to exactly 0 where the
    middle slice's T1 is 0: a small offset on the empty background would otherwise dominate SSIM
    there (its stabilising constants are tiny) and waste the model's capacity.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        chans = [cfg.base_channels * 2 ** i for i in range(cfg.levels)]
        self.stem = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock(c_in, c_out, cfg.groups) for c_in, c_out
                                  in zip([chans[0]] + chans[:-1], chans))
        lowest = cfg.image_size // 2 ** (cfg.levels - 1)
        self.bottleneck = (TransformerBottleneck(chans[-1], lowest, cfg.transformer_layers,
                                                 cfg.heads)
                           if cfg.transformer_layers else nn.Identity())
        self.up_conv = nn.ModuleList(nn.Conv2d(chans[i + 1], chans[i], 3, padding=1)
                                     for i in range(cfg.levels - 1))
        self.up = nn.ModuleList(ResBlock(2 * chans[i], chans[i], cfg.groups)
                                for i in range(cfg.levels - 1))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, t1: torch.Tensor) -> torch.Tensor:
        x = self.stem(t1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)                    # level i: (N, base * 2**i, H / 2**i, W / 2**i)
        x = self.bottleneck(skips.pop())
        for i in reversed(range(self.cfg.levels - 1)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([self.up_conv[i](x), skips.pop()], dim=1))
        middle = t1[:, self.cfg.neighbours:self.cfg.neighbours + 1]   # (N, 1, H, W)
        return self.head(x) * (middle > 0)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: (T1, T2) pair -> one real/fake logit per ~22x22-pixel patch.

    (N, 1, 64, 64) x 2 -> (N, 1, 8, 8). Spectral norm keeps the critic Lipschitz so a small
    adversarial weight cannot destabilise the generator.
    """

    def __init__(self, channels: int = 32):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        layers, c_in = [], 2
        for c_out in (channels, 2 * channels, 4 * channels):
            layers += [sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers.append(sn(nn.Conv2d(c_in, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([t1, t2], dim=1))


MODELS = {
    "unet": UNetConfig(),
    "unet25d": UNetConfig(neighbours=1),
    "transunet": UNetConfig(transformer_layers=4),
}


def build_model(**model_args) -> UNet:
    """Rebuild a translator from the `model_args` stored in a checkpoint."""
    return UNet(UNetConfig(**model_args))


def model_args(name: str, **overrides) -> dict:
    """Constructor arguments of the named model, with overrides (e.g. base_channels)."""
    return {**asdict(MODELS[name]), **{k: v for k, v in overrides.items() if v is not None}}
