"""Q1 models: shapes, the zero background, learning on one batch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from q1_mri.metrics import ssim
from q1_mri.model import PatchDiscriminator, build_model, model_args


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; on a busy machine two OpenMP threads per
    process spin and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "shape"), [("unet", (64, 64)), ("unet", (32, 48)),
                                             ("transunet", (64, 64)), ("transunet", (32, 32))])
def test_shapes(name, shape):
    model = build_model(**model_args(name, base_channels=8, image_size=shape[0]))
    x = torch.rand(3, 1, *shape)
    assert model(x).shape == (3, 1, *shape)


def test_transunet_rejects_another_image_size():
    model = build_model(**model_args("transunet", base_channels=8, image_size=64))
    with pytest.raises(ValueError, match="image_size"):
        model(torch.rand(1, 1, 32, 48))


def test_output_is_zero_outside_the_brain():
    model = build_model(**model_args("unet", base_channels=8))
    x = torch.rand(2, 1, 64, 64)
    x[:, :, :20] = 0
    assert (model(x)[:, :, :20] == 0).all()


def test_discriminator_gives_patch_logits():
    d = PatchDiscriminator(channels=8)
    assert d(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("name", ["unet", "transunet"])
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
