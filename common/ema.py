"""Exponential moving average of model weights, evaluated instead of the raw weights."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps `shadow = d * shadow + (1 - d) * weights` after every optimiser step.

    Averaging the last few hundred steps smooths the noise of small-batch training and usually
    gives a better validation score than the final weights, at no training cost. The decay
    ramps up as d = min(decay, (1 + n) / (10 + n)) over the first updates n, so short runs are
    not dominated by the random initial weights.

    Floating-point buffers (BatchNorm running means and variances) are averaged like the
    weights: the statistics must describe the activations of the AVERAGED weights, and copying
    the raw model's would pair them with weights from other steps. Integer buffers
    (num_batches_tracked) are copied. A buffer that stays constant during training (an input
    standardisation fitted before the EMA is created) stays exact, since its average is itself.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = dict(model.named_parameters())
        for name, p in self.shadow.named_parameters():
            p.lerp_(params[name].detach(), 1.0 - d)
        buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            if b.is_floating_point():
                b.lerp_(buffers[name].detach(), 1.0 - d)
            else:
                b.copy_(buffers[name])

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = state["updates"]
