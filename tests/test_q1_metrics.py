"""Q1 metrics against scikit-image and hand-worked cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from q1_mri.metrics import all_metrics, mae, psnr, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair(seed: int, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    gt = np.clip(rng.random(shape) * 0.3 + np.linspace(0, 0.7, shape[1]), 0, 1)
    pred = np.clip(gt + rng.normal(0, 0.05, shape), 0, 1)
    return gt.astype(np.float32), pred.astype(np.float32)


@pytest.mark.parametrize("seed,shape", [(0, (64, 64)), (1, (64, 64)), (2, (31, 47))])
def test_ssim_matches_skimage(seed, shape):
    gt, pred = _pair(seed, shape)
    ours = ssim(torch.from_numpy(gt)[None, None], torch.from_numpy(pred)[None, None], 1.0).item()
    ref = skimage_metrics.structural_similarity(gt, pred, data_range=1.0)
    assert ours == pytest.approx(ref, abs=1e-3)


def test_ssim_matches_skimage_on_skull_stripped_images():
    gt, pred = _pair(3)
    gt[:, :12] = 0
    pred[:, :12] = 0
    ours = ssim(torch.from_numpy(gt)[None, None], torch.from_numpy(pred)[None, None]).item()
    assert ours == pytest.approx(skimage_metrics.structural_similarity(gt, pred, data_range=1.0),
                                 abs=1e-3)


def test_psnr_matches_skimage():
    gt, pred = _pair(4)
    ours = psnr(torch.from_numpy(gt)[None, None], torch.from_numpy(pred)[None, None], 1.0).item()
    ref = skimage_metrics.peak_signal_noise_ratio(gt, pred, data_range=1.0)
    assert ours == pytest.approx(ref, abs=1e-3)


def test_masked_metrics_only_see_the_mask():
    gt = torch.zeros(1, 1, 16, 16)
    pred = torch.zeros(1, 1, 16, 16)
    pred[..., :8] = 0.5                       # error only in the left half
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., 8:] = True                      # mask is the right half
    assert mae(gt, pred).item() == pytest.approx(0.25)
    assert mae(gt, pred, mask).item() == 0.0
    mask[..., 0] = True                       # add one error column of 16 pixels to 144
    assert mae(gt, pred, mask).item() == pytest.approx(0.5 * 16 / 144)


def test_perfect_prediction_scores():
    gt = torch.rand(2, 1, 32, 32)
    mask = gt > 0.3
    scores = all_metrics(gt, gt.clone(), mask)
    assert torch.allclose(scores["ssim"], torch.ones(2))
    assert torch.allclose(scores["masked_ssim"], torch.ones(2))
    assert (scores["masked_mae"] == 0).all() and (scores["psnr"] > 100).all()
