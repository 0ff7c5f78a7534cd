"""Query groups (Group DETR, Chen et al. 2022): one-to-many supervision from one-to-one matching.

In training the model decodes ``groups`` independent groups of ``num_queries`` learned queries;
each group is matched one-to-one to the targets on its own and cannot attend to the others, so
every target supervises several queries and training converges faster. Outside training only the
first group runs: inference is the model's own.

Adds: ``(groups - 1) * Q`` rows to ``query_embed`` (the model's ``query_embed.weight`` is then
(groups * Q, d), the first Q rows the model's own) and, in training, their queries as
``groups - 1`` more blocks of the matching span. Loss: the set criterion of every other group,
added to the total (the logged terms stay the first group's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..processing.checks import Target, is_positive_int
from .base import DETROption, OptionState

if TYPE_CHECKING:
    from ..models.detr import DETR


class QueryGroups(DETROption):
    """``groups`` groups of object queries in training, the first alone at inference (see the module docstring)."""

    name = "query_groups"
    order = 0

    def __init__(self, groups: int) -> None:
        super().__init__()
        if not is_positive_int(groups):
            raise ValueError(f"query_groups must be an int >= 1, got {groups!r}")
        self.groups = groups

    def spec(self) -> dict[str, Any]:
        return {"groups": self.groups}

    def attach(self, model: DETR) -> None:
        model.query_embed = nn.Embedding(model.num_queries * self.groups, model.transformer.d_model)

    def remove_from(self, model: DETR) -> None:
        super().remove_from(model)
        first = model.query_embed.weight[: model.num_queries].detach().clone()  # (Q, d): the model's own group
        model.query_embed = nn.Embedding.from_pretrained(first, freeze=False)

    def add_queries(self, model: DETR, state: OptionState) -> None:
        if not model.training:
            return
        span = state.spans["matching"]
        count = model.num_queries * self.groups
        span.position = model.query_embed.weight[:count]  # (G*Q, d)
        span.blocks = torch.arange(count, device=span.position.device) // model.num_queries  # (G*Q,) group index
        span.num_blocks = self.groups

    def loss_terms(self, model: DETR, state: OptionState | None, targets: Sequence[Target]) -> dict[str, Tensor]:
        if state is None:
            return {}
        logits, boxes = state.outputs("matching")  # (L, B, G*Q, K+1), (L, B, G*Q, 4)
        q = model.num_queries
        total = None
        for g in range(1, logits.shape[2] // q):  # the first group is the model's own, scored by the model
            group = slice(g * q, (g + 1) * q)
            loss = model.criterion(list(zip(logits[:, :, group].unbind(0), boxes[:, :, group].unbind(0))), targets)
            total = loss["loss"] if total is None else total + loss["loss"]
        return {} if total is None else {"loss": total}
