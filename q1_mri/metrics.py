"""Image-quality metrics for T1->T2 translation: pure functions, ground truth first.

All take batches of normalised images (B, 1, H, W) float tensors and return one value per image
(B,). `mask` (B, 1, H, W) bool restricts a metric to brain pixels. `data_range` is the nominal
range of the normalised images (1.0 here), stated next to every reported number.

Scores are computed in SLICE_SCALE units (`slice_scaled`): truth and prediction alike divided
by the 99.5th percentile of their own brain pixels in that slice, so a gain error over a whole
slice (a T2 intensity a model cannot know from T1) does not count, and every slice weighs the
same whatever its scanner scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7          # as skimage.metrics.structural_similarity's default
SSIM_K1, SSIM_K2 = 0.01, 0.03
SLICE_PERCENTILE = 99.5
SLICE_SCALE = "slice-p995"
SLICE_SCALE_TEXT = (f"each slice, truth and prediction alike, divided by the {SLICE_PERCENTILE}th "
                    "percentile of its own brain pixels (the truth's brain mask), clipped to [0, 1]")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over (C, H, W) per image, restricted to `mask` when given. (B, ...) -> (B,)"""
    if mask is None:
        return values.flatten(1).mean(1)
    mask = mask.to(values.dtype)
    return (values * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)


def mae(gt: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _masked_mean((pred - gt).abs(), mask)


def mse(gt: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _masked_mean((pred - gt) ** 2, mask)


def psnr(gt: torch.Tensor, pred: torch.Tensor, data_range: float = 1.0,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE)."""
    return 10.0 * torch.log10(data_range ** 2 / mse(gt, pred, mask).clamp_min(1e-12))


def ssim_map(gt: torch.Tensor, pred: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Local SSIM (Wang et al. 2004) with a 7x7 uniform window and sample covariances.

    This is scikit-image's default formulation. Only window positions that fit inside the image
    are computed, which is exactly the region skimage averages over.
    (B, 1, H, W) -> (B, 1, H - 6, W - 6)
    """
    gt, pred = gt.float(), pred.float()
    win = SSIM_WINDOW
    mean = lambda x: F.avg_pool2d(x, win, stride=1)  # noqa: E731
    mu_x, mu_y = mean(gt), mean(pred)
    cov_norm = win * win / (win * win - 1)         # unbiased (sample) covariance
    var_x = cov_norm * (mean(gt * gt) - mu_x ** 2)
    var_y = cov_norm * (mean(pred * pred) - mu_y ** 2)
    cov_xy = cov_norm * (mean(gt * pred) - mu_x * mu_y)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
            / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))


def ssim(gt: torch.Tensor, pred: torch.Tensor, data_range: float = 1.0,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM per image; with `mask`, averaged over windows centred on mask pixels. (B,)"""
    local = ssim_map(gt, pred, data_range)
    if mask is not None:
        pad = SSIM_WINDOW // 2
        mask = mask[..., pad:-pad, pad:-pad]
    return _masked_mean(local, mask)


def all_metrics(gt: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                data_range: float = 1.0) -> dict[str, torch.Tensor]:
    """Every reported metric, whole image and brain-masked, one value per image. Each (B,)."""
    out = {}
    local = ssim_map(gt, pred, data_range)          # shared by both regions (the costly part)
    pad = SSIM_WINDOW // 2
    for region, m in (("", None), ("masked_", mask)):
        out[f"{region}mae"] = mae(gt, pred, m)
        out[f"{region}mse"] = mse(gt, pred, m)
        out[f"{region}psnr"] = psnr(gt, pred, data_range, m)
        out[f"{region}ssim"] = _masked_mean(local, None if m is None else m[..., pad:-pad, pad:-pad])
    return out


def slice_scaled(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) images -> the same divided by the SLICE_PERCENTILE-th percentile of each
    image's pixels inside `mask` (B, 1, H, W) bool, clipped to [0, 1]; 0 outside the mask.
    An image whose masked pixels are all 0 stays 0."""
    x = images.float().flatten(1)
    m = mask.flatten(1)
    q = torch.nanquantile(torch.where(m, x, torch.nan), SLICE_PERCENTILE / 100, dim=1)
    q = torch.nan_to_num(q, nan=1.0).clamp_min(1e-6)[:, None]
    return torch.where(m, (x / q).clamp(0, 1), 0).reshape(images.shape)


def slice_scores(gt: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """Every metric of `all_metrics` in SLICE_SCALE units (data range 1), one value per image."""
    return all_metrics(slice_scaled(gt, mask), slice_scaled(pred, mask), mask, 1.0)
