"""Q1 models: our residual U-Net (2-D or 2.5-D input) and the plain U-Net reference.

U-Net: Ronneberger et al. 2015. Upsampling is bilinear interpolation followed by a 3x3
convolution: transposed convolutions left checkerboard artefacts on these images (Odena et al.
2016). BatchNorm rather than GroupNorm: with bf16 autocast on a CPU with AMX (our development
machines) the residual U-Net at width 32 trains at 42 slices/s with BatchNorm against 34 with
GroupNorm (one core), and its running statistics are averaged by the weight EMA.
2.5-D input: the slice and its `neighbours` adjacent slices on each side (same patient and view)
as input channels, so the network sees through-plane context while predicting one slice; the
neighbours come from q1_mri.neighbours, which verifies the data's slice order first.
The plain U-Net is the reference every solution must beat: the textbook network (double 3x3
conv + BatchNorm + ReLU per level, max-pooling, transposed-convolution upsampling, 4
resolutions at widths 32-256, about 1.9M parameters) trained with plain L1 and Adam.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    base_channels: int = 32     # channels at full resolution; doubled at each level down
    levels: int = 4             # resolutions 64, 32, 16, 8 for 64x64 input
    neighbours: int = 0         # adjacent slices per side as extra input channels (0: 2-D)
    plain: bool = False         # the reference: double conv blocks, transposed-conv upsampling

    @property
    def in_channels(self) -> int:
        return 2 * self.neighbours + 1


class ResBlock(nn.Module):
    """Two 3x3 convs with BatchNorm + SiLU and a (1x1 if needed) skip. (N, c_in, H, W) -> (N, c_out, H, W)"""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.body(x) + self.skip(x))


class DoubleConv(nn.Sequential):
    """The plain U-Net's block: (conv 3x3, BatchNorm, ReLU) x 2. (N, c_in, H, W) -> (N, c_out, H, W)"""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


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
        block = DoubleConv if cfg.plain else ResBlock
        self.stem = nn.Identity() if cfg.plain else nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        first = cfg.in_channels if cfg.plain else chans[0]
        self.down = nn.ModuleList(block(c_in, c_out) for c_in, c_out
                                  in zip([first] + chans[:-1], chans))
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) if cfg.plain else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(chans[i + 1], chans[i], 3, padding=1))
            for i in range(cfg.levels - 1))
        self.up = nn.ModuleList(block(2 * chans[i], chans[i]) for i in range(cfg.levels - 1))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, t1: torch.Tensor) -> torch.Tensor:
        x = self.stem(t1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)                    # level i: (N, base * 2**i, H / 2**i, W / 2**i)
        x = skips.pop()
        for i in reversed(range(self.cfg.levels - 1)):
            x = self.up[i](torch.cat([self.upsample[i](x), skips.pop()], dim=1))
        middle = t1[:, self.cfg.neighbours:self.cfg.neighbours + 1]   # (N, 1, H, W)
        return self.head(x) * (middle > 0)


MODELS = {
    "unet": UNetConfig(),
    "unet25d": UNetConfig(neighbours=2),
    "plain": UNetConfig(plain=True),
}


def build_model(**model_args) -> UNet:
    """Rebuild a translator from the `model_args` stored in a checkpoint."""
    return UNet(UNetConfig(**model_args))


def model_args(name: str, **overrides) -> dict:
    """Constructor arguments of the named model, with overrides (e.g. base_channels)."""
    return {**asdict(MODELS[name]), **{k: v for k, v in overrides.items() if v is not None}}
