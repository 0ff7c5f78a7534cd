"""An exponential moving average of a model's weights (``--ema``), evaluated and saved instead of the raw weights.

Each optimizer step, every floating-point weight and buffer becomes ``d * ema + (1 - d) * current``
with ``d = decay * (1 - exp(-updates / warmup))``: the average follows the raw weights closely at
first and ever more slowly, as in RT-DETR and RF-DETR. Integer buffers are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """The averaged copy of ``model`` (``.model``, in eval mode, without gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: int = 2000) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.warmup)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        current = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
