"""Exponential moving average of model weights, evaluated instead of the raw weights."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps `shadow = decay * shadow + (1 - decay) * weights` after every optimiser step.

    Averaging the last few hundred steps smooths the noise of small-batch training and usually
    gives a better validation score than the final weights, at no training cost. Buffers (e.g.
    normalisation statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, p in self.shadow.named_parameters():
            p.lerp_(params[name].detach(), 1.0 - self.decay)
        buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(buffers[name])

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
