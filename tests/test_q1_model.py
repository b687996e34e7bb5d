"""Q1 models: shapes, the zero background, the reference's size, learning on one batch,
augmentation that keeps anatomy."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from q1_mri.metrics import ssim
from q1_mri.model import build_model, model_args
from q1_mri.train import MAX_SHIFT, augment, shift_images


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; on a busy machine two OpenMP threads per
    process spin and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "shape"), [("unet", (64, 64)), ("unet", (32, 48)),
                                             ("unet25d", (64, 64)), ("plain", (32, 48))])
def test_shapes(name, shape):
    model = build_model(**model_args(name, base_channels=8))
    x = torch.rand(3, model.cfg.in_channels, *shape)
    assert model(x).shape == (3, 1, *shape)


def test_the_reference_is_the_textbook_unet_of_about_two_million_parameters():
    plain = build_model(**model_args("plain"))
    n = sum(p.numel() for p in plain.parameters())
    assert 1.85e6 < n < 1.95e6 and plain.cfg.base_channels == 32 and plain.cfg.levels == 4
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in plain.modules())
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in build_model(
        **model_args("unet")).modules())


def test_output_is_zero_outside_the_brain():
    model = build_model(**model_args("unet", base_channels=8))
    x = torch.rand(2, 1, 64, 64)
    x[:, :, :20] = 0
    assert (model(x)[:, :, :20] == 0).all()


@pytest.mark.parametrize("name", ["unet", "plain"])
def test_overfits_one_batch(name):
    torch.manual_seed(0)
    t1 = F.avg_pool2d(torch.rand(4, 1, 64, 64), 5, stride=1, padding=2)   # smooth "anatomy"
    t1[..., :8, :] = 0                                                     # some background
    t2 = (1 - t1) * (t1 > 0)                                               # contrast inversion
    model = build_model(**model_args(name, base_channels=8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        pred = model(t1)
        loss = F.l1_loss(pred, t2) + (1 - ssim(t2, pred).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_shifts_are_per_slice_and_fill_with_zeros():
    """Each slice moves by its own offset; what enters at the edge is 0, nothing wraps."""
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64) + 1
    out = shift_images(x, torch.tensor([3, -2]), torch.tensor([0, 4]))
    assert torch.equal(out[0, 0, 3:], x[0, 0, :-3]) and (out[0, 0, :3] == 0).all()
    assert torch.equal(out[1, 0, :-2, 4:], x[1, 0, 2:, :-4])
    assert (out[1, 0, -2:] == 0).all() and (out[1, 0, :, :4] == 0).all()


def test_augmentation_keeps_pairs_aligned_and_the_brain_inside():
    """Input and target move together, never wrap, and sagittal slices are never mirrored."""
    g = torch.Generator().manual_seed(0)
    t2 = torch.zeros(64, 1, 64, 64)
    t2[:, :, 10:20, 30:40] = 1                           # a block away from the edges
    x = t2.clone()
    view = torch.tensor([2] * 64)                        # sagittal
    xa, ta = augment(x, t2, view, g)
    assert torch.equal(xa > 0, ta > 0)                   # aligned (gain changes values only)
    assert (ta.sum((1, 2, 3)) == 100).all()              # the block never left the image
    rows = ta.sum(3)[:, 0].argmax(1)                     # first row of the block
    assert ((rows >= 10 - MAX_SHIFT) & (rows <= 10 + MAX_SHIFT)).all()   # no mirror to 44..53
    assert len(torch.unique(rows)) > 1                   # per-slice shifts, not one for all
