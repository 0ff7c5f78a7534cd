"""The extension point of DETR's training options: the hooks of the model's one decoder pass.

The paper's pass (:meth:`detr.models.detr.DETR.decoder_pass`) encodes the features, then decodes Q
learned query positions with empty (zero) query content, every query attending to every other. A
training option changes that pass at one or more named hooks of :class:`DETROption`, each doing
nothing by default:

1. ``read_encoder(model, state)``: read the encoder output (the dense head makes proposals);
2. ``add_queries(model, state)``: change the model's queries (query groups, anchor boxes) or add a
   :class:`QuerySpan` of its own (denoising queries); queries attend only within their block;
3. ``run_decoder(model, state, queries)``: run the decoder layers itself on the assembled
   :class:`DecoderQueries` (anchor-box refinement; one option at most);
4. ``cross_attention_inputs(model, state, anchors)``: what the decoder layers' cross-attention reads
   besides the memory, for queries at their anchors (the deformable decoder: where to sample);
   the decoder loop of ``run_decoder`` collects them (:func:`cross_attention_inputs`);
5. ``loss_terms(model, state, targets)``: loss terms under the option's own names, and their
   weighted sum under ``"loss"``, added to the model's total.

An option is an ``nn.Module`` that becomes a submodule of the model under its ``name`` (so its
parameters are ``<name>.*`` in the state dict), builds its layers in ``attach(model)`` from the
model's sizes (where it replaces a part of the model, that part's parameters keep their place: query
groups' longer ``query_embed``, the deformable decoder's cross-attention in each decoder layer), and
says in ``spec()`` how to build it again. Options need more of the transformer than the reference
call: ``encode(src, mask, pos)`` and a ``decoder`` called as
``decoder(tgt, memory, memory_key_padding_mask, pos, query_pos, self_attn_mask)``, as
:class:`detr.models.transformer.Transformer` has.

Shapes: B images, an (h, w) feature map of HW tokens, width d, N queries in all (the model's Q,
plus what options add), L decoder layers. Boxes are normalized (cx, cy, w, h).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..processing.checks import Target

if TYPE_CHECKING:
    from ..models.detr import DETR


@dataclass
class QuerySpan:
    """A run of decoder queries.

    content: (B, n, d) initial content, or None for zeros (the reference's empty queries).
    position: (n, d) or (B, n, d) position embeddings, or None where the decoder makes them from anchors.
    anchors: (B, n, 4) normalized cxcywh anchor boxes, or None.
    blocks: (n,) int64 block index in [0, num_blocks); a query attends only to the queries of its
        own block (of its own span: blocks of different spans never meet).
    num_blocks: how many blocks ``blocks`` counts (a Python int: no device sync to read it).
    key_valid: (B, n) bool, False on queries no one may attend to (empty slots), or None: all valid.
    """

    content: Tensor | None
    position: Tensor | None
    anchors: Tensor | None
    blocks: Tensor
    num_blocks: int = 1
    key_valid: Tensor | None = None

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass
class OptionState:
    """What one decoder pass knows, filled in as it goes: what the options' hooks read and change.

    memory, memory_mask, memory_pos: the encoder output (B, HW, d), its key padding mask (B, HW) or
        None, and its position encoding (B, HW, d); feature_size (h, w) and feature_mask (B, h, w)
        or None.
    targets: the training targets, when the pass computes a loss (else None).
    spans: the queries by name, ``"matching"`` (the model's, matched to the targets) first.
    proposals: the dense head's per-token outputs (see :mod:`detr.options.dense`), when made.
    extras: anything else an option keeps for its loss (its name as key).
    logits, boxes: after decoding, the predictions of every query, (L, B, N, K+1) and (L, B, N, 4);
    hidden: the decoder embeddings they come from, (L, B, N, d).
    """

    memory: Tensor
    memory_mask: Tensor | None
    memory_pos: Tensor
    feature_size: tuple[int, int]
    feature_mask: Tensor | None
    targets: Sequence[Target] | None
    spans: dict[str, QuerySpan] = field(default_factory=dict)
    proposals: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    logits: Tensor | None = None
    boxes: Tensor | None = None
    hidden: Tensor | None = None  # the decoder's embeddings (L, B, N, d), for heads beyond boxes (masks)

    def span_slice(self, name: str) -> slice:
        """Where span ``name`` lies along the query axis of the assembled queries and outputs."""
        start = 0
        for key, span in self.spans.items():
            if key == name:
                return slice(start, start + len(span))
            start += len(span)
        raise KeyError(name)

    def outputs(self, name: str) -> tuple[Tensor, Tensor]:
        """Logits (L, B, n, K+1) and boxes (L, B, n, 4) of span ``name``."""
        assert self.logits is not None and self.boxes is not None, "the pass has not decoded yet"
        where = self.span_slice(name)
        return self.logits[:, :, where], self.boxes[:, :, where]


class DETROption(nn.Module):
    """An addition to the paper's DETR, switched on per model (see the module docstring).

    Class attributes: ``name`` (the model's attribute and state-dict prefix), ``order`` (hooks run
    in increasing order), ``used_at_inference`` (the inference copy keeps it), ``requires`` (names
    of options that must be there too; kept at inference along with this one),
    ``may_leave_parameters_unused`` (some steps give some parameters no gradient: DDP then looks
    for them).
    """

    name: ClassVar[str]
    order: ClassVar[int]
    used_at_inference: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    # whether some training steps leave some of the model's parameters without a gradient (DDP must know)
    may_leave_parameters_unused: ClassVar[bool] = False

    def attach_to(self, model: DETR) -> None:
        """Become ``model.<name>`` and build the layers that depend on the model's sizes."""
        check_transformer_api(model.transformer, type(self).__name__)
        if getattr(model, self.name, None) is not None:
            raise ValueError(f"the model already has a {self.name!r} option; give each option once")
        missing = [name for name in self.requires if getattr(model, name, None) is None]
        if missing:
            raise ValueError(self.missing_requirement_message(missing))
        model.add_module(self.name, self)
        self.attach(model)

    def missing_requirement_message(self, missing: list[str]) -> str:
        return f"{type(self).__name__} needs the option(s) {missing} as well"

    def attach(self, model: DETR) -> None:
        """Build layers from the model's sizes (``model.num_classes``, ``model.transformer.d_model`` ...)."""

    def remove_from(self, model: DETR) -> None:
        """Leave ``model`` (an inference copy drops training-only options), undoing what ``attach`` changed."""
        setattr(model, self.name, None)

    def spec(self) -> dict[str, Any]:
        """The constructor arguments that build this option again (saved with the model)."""
        return {}

    # the four hooks (see the module docstring)
    def read_encoder(self, model: DETR, state: OptionState) -> None:
        pass

    def add_queries(self, model: DETR, state: OptionState) -> None:
        pass

    runs_decoder: ClassVar[bool] = False

    def run_decoder(self, model: DETR, state: OptionState, queries: DecoderQueries) -> tuple[Tensor, Tensor]:
        """hs (L, B, N, d) normed layer outputs and boxes (L, B, N, 4); only where ``runs_decoder``."""
        raise NotImplementedError

    def cross_attention_inputs(self, model: DETR, state: OptionState, anchors: Tensor) -> dict[str, Any]:
        """Keyword inputs of every decoder layer's cross-attention for queries at ``anchors`` (B, N, 4)."""
        return {}

    def loss_terms(self, model: DETR, state: OptionState | None, targets: Sequence[Target]) -> dict[str, Tensor]:
        return {}


def cross_attention_inputs(model: DETR, state: OptionState, anchors: Tensor) -> dict[str, Any]:
    """Every option's :meth:`DETROption.cross_attention_inputs` for queries at ``anchors``, together."""
    inputs: dict[str, Any] = {}
    for option in model.options:
        inputs.update(option.cross_attention_inputs(model, state, anchors))
    return inputs


def runs_in_steps(transformer: nn.Module) -> bool:
    """Whether ``transformer`` runs its encoder and its decoder as separate steps (``encode``, ``decoder``),
    between which the options act; a transformer with the reference's single call only takes no option."""
    return callable(getattr(transformer, "encode", None)) and callable(getattr(transformer, "decoder", None))


def check_transformer_api(transformer: nn.Module, option: str) -> None:
    """Options run the encoder and the decoder separately: say so when the transformer cannot."""
    if not runs_in_steps(transformer):
        raise ValueError(
            f"the training option {option} needs a transformer with encode(src, mask, pos) -> (memory, "
            "key_padding_mask, pos) and a decoder module called as decoder(tgt, memory, memory_key_padding_mask, "
            f"pos, query_pos, self_attn_mask), like detr.Transformer; {type(transformer).__name__} has not. "
            "Use detr.Transformer, or train without the option"
        )


def _concat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@dataclass
class DecoderQueries:
    """The decoder's queries, every span's in order: ``content`` (B, N, d), ``position`` (B, N, d) or None,
    ``anchors`` (B, N, 4) or None (unless every span has them), and ``attn_mask``, the self-attention mask,
    True = may attend: None (one block, all valid), (N, N), or (B, 1, N, N) with invalid keys."""

    content: Tensor
    position: Tensor | None
    anchors: Tensor | None
    attn_mask: Tensor | None


def assemble_queries(spans: Sequence[QuerySpan], batch: int, d_model: int, like: Tensor) -> DecoderQueries:
    """The decoder's queries from the spans (see :class:`DecoderQueries`); ``like``: a tensor of the dtype
    and device of the zero content."""
    content = _concat([s.content if s.content is not None else like.new_zeros(batch, len(s), d_model) for s in spans])
    positions = [s.position for s in spans]
    position = None
    if all(p is not None for p in positions):
        position = _concat([p if p.dim() == 3 else p.unsqueeze(0).expand(batch, -1, -1) for p in positions])
    anchors = _concat([s.anchors for s in spans]) if all(s.anchors is not None for s in spans) else None

    offset, blocks = 0, []
    for span in spans:  # blocks of different spans never meet
        blocks.append(span.blocks + offset)
        offset += span.num_blocks
    block = torch.cat(blocks)  # (N,)
    if all(s.key_valid is None for s in spans):
        attn_mask = None if offset == 1 else block[:, None] == block[None, :]  # (N, N)
    else:
        key_valid = torch.cat(
            [
                s.key_valid
                if s.key_valid is not None
                else torch.ones(batch, len(s), dtype=torch.bool, device=block.device)
                for s in spans
            ],
            dim=1,
        )  # (B, N)
        same = block[:, None] == block[None, :]  # (N, N)
        eye = torch.eye(len(block), dtype=torch.bool, device=block.device)  # every query sees itself: no empty row
        attn_mask = ((same[None] & key_valid[:, None, :]) | eye)[:, None]  # (B, 1, N, N)
    return DecoderQueries(content, position, anchors, attn_mask)
