"""`make bench` helpers and the per-device defaults (issue "Fast where it runs").

The FLOP counter on a module whose cost is known by hand, the peak tables, and the defaults
the training scripts resolve per device: the CPU ones must stay exactly what CPU runs have
always saved in their configs (so --resume identity and comparisons hold), the CUDA ones use
the device. No GPU needed: the resolution takes the device kind as an argument.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from common import bench
from common.runtime import adamw, compile_enabled, device_batch
from q1_mri import train as q1_train
from q2_ecg import train as q2_train

# the parsed flags of a default Q2 run on the CPU (its CPU defaults predate the per-device
# ones, git 030ceb3): the CPU must resolve to exactly these, types included
Q2_OLD_CPU = {"data": "demo", "results_root": None, "seed": 0, "device": "auto",
              "model": "resnet", "split": "kfold", "folds": 5, "fold": "0", "name": None,
              "epochs": 8, "budget": "cpu", "beats_per_epoch": 30000, "batch_beats": 512,
              "lr": 0.002, "weight_decay": 0.001,
              "class_weight_power": 0.5, "patience": 3, "ema_decay": 0.995, "channels": None,
              "rr_set": None, "max_monitor_beats": None, "resume": False, "compile": False, "dry_run": False}
ARGV = ["--data", "demo", "--fold", "0"]


# ---------------------------------------------------------------- FLOPs and peaks

def test_flop_counter_linear_forward_and_backward():
    """nn.Linear(8, 4) on 2 rows: 2*2*8*4 = 128 FLOPs forward; backward 128 for the weight
    gradient, and another 128 for the input's where it needs one."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    assert bench.count_flops(lambda: layer(x))[0] == 128
    assert bench.count_flops(lambda: layer(x).sum().backward())[0] == 128 + 128
    x.requires_grad_(True)
    flops, out = bench.count_flops(lambda: (layer(x).sum().backward(), 2)[1])
    assert (flops, out) == (128 + 2 * 128, 2)


def test_measure_reports_flops_per_item_and_rate():
    layer = nn.Linear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    r = SimpleNamespace(device=torch.device("cpu"), model=layer, step_model=layer,
                        precision="fp32")
    m = bench.measure(r, lambda: (r.step_model(x).sum().backward(), 2)[1], steps=3)
    assert m["flops_per_item"] == 384 / 2 and m["batch"] == 2 and m["compile"] is False
    assert m["items_per_s"] > 0 and m["flop_s"] == pytest.approx(192 * m["items_per_s"])
    assert m["peak_rss_mb"] > 0
    assert "TFLOP/s" in bench.row("linear", "row", m)
    r.precision = "bfloat16"                  # no fraction of an fp32 peak for bf16 on the CPU
    m = bench.measure(r, lambda: (r.step_model(x).sum().backward(), 2)[1], steps=1)
    assert m["mfu"] is None and m["peak"].startswith("n/a (bfloat16 on the CPU")


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H200", 989), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H100 NVL", 835), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L4", 121), ("NVIDIA L40S", 362), ("NVIDIA A10", 125), ("NVIDIA GH200 480GB", 989)])
def test_gpu_peak_table(name, tflops):
    assert bench.gpu_peak_tflops(name) == tflops


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla T4", "AMD Instinct MI300X", ""])
def test_gpu_peak_unknown_is_none(name):
    assert bench.gpu_peak_tflops(name) is None


def test_cpu_peak_estimate_needs_avx512():
    info = "processor\t: 0\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
    peak, text = bench.cpu_peak(2, info)
    assert peak == 2 * 2 * 16 * 2 * 2.0e9 and "AVX-512" in text
    peak, text = bench.cpu_peak(2, info.replace(" avx512f avx512bw", ""))
    assert peak is None and text.startswith("n/a")


# ---------------------------------------------------------------- per-device defaults

def test_device_batch_resolution():
    assert device_batch("auto", "auto", "cpu", 32, 256, 1e-3) == (32, 1e-3)
    assert device_batch("auto", "auto", "cuda", 32, 256, 1e-3) == (256, 1e-3 * math.sqrt(8))
    assert device_batch(64, "auto", "cuda", 32, 256, 1e-3) == (64, 1e-3)   # explicit: unscaled
    assert device_batch("auto", 5e-3, "cuda", 32, 256, 1e-3) == (256, 5e-3)
    assert [compile_enabled(f, k) for f in ("auto", "on", "off") for k in ("cpu", "cuda")] == [
        False, True, True, True, False, False]


@pytest.mark.parametrize("module, old", [(q2_train, Q2_OLD_CPU)])
def test_cpu_defaults_are_the_old_ones(module, old):
    """Every parsed value on the CPU, keys and types included, is what CPU runs saved before."""
    args = vars(module.parse_args(ARGV, kind="cpu"))
    assert args == old
    assert list(args) == list(old) and type(args["lr"]) is float and args["compile"] is False
    # --device cpu resolves the CPU defaults on any machine
    assert vars(module.parse_args([*ARGV, "--device", "cpu"])) == {**old, "device": "cpu"}


def test_cuda_defaults_use_the_device():
    q1 = q1_train.parse_args(ARGV, kind="cuda")
    assert (q1.batch_size, q1.lr, q1.compile) == (256, 1e-3 * math.sqrt(256 / 32), True)
    q2 = q2_train.parse_args(ARGV, kind="cuda")
    assert (q2.batch_beats, q2.lr, q2.compile) == (4096, 2e-3 * math.sqrt(4096 / 512), True)
    assert (q2.budget, q2.beats_per_epoch) == ("full", "auto")     # one pass, known with the data
    assert q2_train.parse_args([*ARGV, "--budget", "cpu"], kind="cuda").beats_per_epoch == 30_000
    assert q1_train.parse_args([*ARGV, "--no-compile"], kind="cuda").compile is False
    assert q2_train.parse_args([*ARGV, "--compile", "off"], kind="cuda").compile is False
    assert q1_train.parse_args([*ARGV, "--compile"], kind="cpu").compile is True
    explicit = q2_train.parse_args([*ARGV, "--batch-beats", "1024"], kind="cuda")
    assert (explicit.batch_beats, explicit.lr) == (1024, 2e-3)


def test_fused_adamw_only_on_cuda():
    params = [nn.Parameter(torch.zeros(3))]
    assert adamw(params, torch.device("cpu"), lr=1e-3).defaults["fused"] is None
    assert adamw(params, torch.device("cuda"), lr=1e-3).defaults["fused"] is True


# ---------------------------------------------------------------- the sync-free step

def test_q2_loss_without_boolean_indexing_is_the_same():
    """The Q2 loss (masked beats weighted 0, no host sync) equals the weighted cross-entropy of
    the unmasked beats alone (boolean indexing) up to float rounding."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(8, 32, 3, generator=g)
    label = torch.randint(0, 3, (8, 32), generator=g)
    mask = torch.rand(8, 32, generator=g) < 0.7
    weight = torch.tensor([0.5, 2.0, 3.0])
    indexed = torch.nn.functional.cross_entropy(out[mask], label[mask], weight=weight)
    assert torch.allclose(q2_train.beat_loss(out, label, mask, weight), indexed, rtol=1e-6)


def test_q1_budgets_per_device_and_model_recipes():
    """The CPU runs the short budget, CUDA full passes; the plain reference keeps its recipe
    (L1 only, no augmentation, no EMA, batches twice as large) on both."""
    cpu, cuda = (q1_train.parse_args(ARGV, kind=k) for k in ("cpu", "cuda"))
    assert (cpu.budget, cpu.epochs, cpu.batch_size) == ("cpu", 8, 32)
    assert (cuda.budget, cuda.epochs, cuda.batch_size) == ("full", 20, 256)
    assert cpu.slices_per_epoch == cuda.slices_per_epoch == "auto"    # known with the data
    plain = q1_train.parse_args([*ARGV, "--model", "plain"], kind="cpu")
    assert (plain.ssim_weight, plain.augment, plain.ema_decay, plain.batch_size,
            plain.lr) == (0.0, "off", 0.0, 64, 1e-3)
    assert q1_train.parse_args([*ARGV, "--budget", "full"], kind="cpu").epochs == 20


def test_q1_augment_draws_everything_from_the_generator_it_is_given():
    """No host generator and no host copy: the same device-generator state gives the same
    batch, and nothing else is drawn from."""
    x, view = torch.rand(16, 1, 64, 64), torch.zeros(16, dtype=torch.int64)
    global_state = torch.get_rng_state()
    a = q1_train.augment(x, x.clone(), view, torch.Generator().manual_seed(3))
    b = q1_train.augment(x, x.clone(), view, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(torch.get_rng_state(), global_state)


def test_q2_full_budget_trains_epochs_of_one_pass(tmp_path):
    """--budget full (the CUDA default): an epoch is one pass over the fold's training beats."""
    from tests.conftest import Q2_KFOLD

    argv = ["--data", "demo", "--device", "cpu", "--epochs", "1", "--batch-beats", "256",
            "--channels", "8", "8", "16", "--budget", "full", *Q2_KFOLD, "--fold", "0",
            "--results-root", str(tmp_path)]
    summary = q2_train.train(q2_train.parse_args(argv))
    assert summary["config"]["beats_per_epoch"] == summary["split_counts"]["train"]["beats"]


def test_q1_preparation_memory_does_not_grow_beyond_its_outputs():
    """Normalising holds the float16 copies and the mask it returns, plus one chunk of float32
    temporaries whatever the number of slices: at the Hub's 155,000 slices about 3.2 GiB
    (make bench prints the measured figure), not the 8 GiB of full float32 copies."""
    from q1_mri.bench import preparation_memory

    excess = []
    for n in (2 * 4096 + 100, 4 * 4096 + 100):                 # 2 and 4 chunks of slices
        m = preparation_memory(n, n // 420 + 1)
        assert m["output_bytes"] == n * 64 * 64 * (2 + 2 + 1)   # t1, t2 float16, mask bool
        excess.append(m["peak_bytes"] - m["output_bytes"])
    assert max(excess) < 96 * 2**20                            # one chunk's temporaries
    assert abs(excess[1] - excess[0]) < 16 * 2**20              # not growing with the slices


def test_q1_bench_measures_the_width_it_is_given():
    """--base-channels reaches the training script: a U-Net of half the width costs about a
    quarter of the FLOPs per slice (convolutions scale with channels in x channels out)."""
    import argparse

    from q1_mri import bench as q1_bench

    def flops(width):
        args = argparse.Namespace(data="demo", device="cpu", models=["unet"], compile="off",
                                  precision="fp32", batch_size=4, base_channels=width,
                                  path="resident", workers=0, steps=1)
        return q1_bench.measure(args)["flops_per_item"]
    ratio = flops(8) / flops(16)
    assert 0.2 < ratio < 0.35, ratio
