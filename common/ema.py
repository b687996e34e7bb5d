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
        self._pairs = None          # (shadow floats, live floats, shadow ints, live ints)

    def _tensors(self, model: nn.Module):
        """The shadow's and the model's float tensors (parameters and float buffers, in one
        order) and integer buffers, listed once: the update is then two fused calls."""
        if self._pairs is None:
            mine = dict(self.shadow.named_parameters()) | dict(self.shadow.named_buffers())
            live = dict(model.named_parameters()) | dict(model.named_buffers())
            floats = [k for k, t in mine.items() if t.is_floating_point()]
            ints = [k for k, t in mine.items() if not t.is_floating_point()]
            self._pairs = ([mine[k] for k in floats], [live[k] for k in floats],
                           [mine[k] for k in ints], [live[k] for k in ints])
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model`'s current weights: torch._foreach_lerp_ over every
        float tensor at once (one fused kernel per device, no Python loop over tensors)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow, live, shadow_ints, live_ints = self._tensors(model)
        torch._foreach_lerp_(shadow, [t.detach() for t in live], 1.0 - d)
        if shadow_ints:
            torch._foreach_copy_(shadow_ints, live_ints)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = state["updates"]
