"""DETR's encoder-decoder transformer.

Same computation and parameter layout as the reference code (post-norm by
default, pre-norm option, position encodings added to queries and keys at every
layer, decoder norm applied to every intermediate output), but batch-first and
with fused scaled-dot-product attention. Parameter names match the reference
(``self_attn.in_proj_weight``, ``linear1``, ``norm1``, ...), so its checkpoints
load without renaming inside the transformer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Dropout(torch.autograd.Function):
    """Dropout whose keep mask comes from a uniform draw: on CPUs about twice as fast as the
    Bernoulli sampler behind ``F.dropout``, same distribution; keeps only the bool mask."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        keep = torch.rand_like(x) >= p
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d)) with dropout p, times v, as separate operations: what the fused kernel
    computes, where on CPUs the fused kernel is slower: when it must drop attention weights (a generic
    path), and in bf16 (2 cores, 8 images, 8 heads of 16, forward and backward: 1.3-3x slower than these
    matmuls and a float32 softmax, most at a few hundred tokens and with a mask)."""
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, h, Lq, Lk)
    if mask is not None:
        weights = weights.masked_fill(~mask, float("-inf"))
    weights = weights.float().softmax(-1)  # in float32, as the fused kernel accumulates
    if p > 0:
        weights = _Dropout.apply(weights, p)
    return weights.to(v.dtype) @ v  # (B, h, Lq, d)


class MultiheadAttention(nn.Module):
    """Multi-head attention with a packed (3C, C) input projection, batch-first.

    Parameter layout is that of ``torch.nn.MultiheadAttention`` (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``) so that reference checkpoints load as they are.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"d_model ({embed_dim}) must be divisible by nhead ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)
        # explainability (detr.explain): compute the attention weights explicitly and keep them in
        # ``weights`` (B, heads, Lq, Lk); off by default, when the fused kernel computes the same without them
        self.record_weights = False
        self.weights: Tensor | None = None

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """query (B, Lq, C), key/value (B, Lk, C) -> (B, Lq, C).

        key_padding_mask: (B, Lk) bool, True on padding; attn_mask: (Lq, Lk) bool, True where a
        query may attend to a key (used to keep query groups apart).
        """
        c = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key:  # self-attention: one matmul for q and k
            q, k = F.linear(query, w[: 2 * c], b[: 2 * c]).chunk(2, dim=-1)
        else:
            q = F.linear(query, w[:c], b[:c])
            k = F.linear(key, w[c : 2 * c], b[c : 2 * c])
        v = F.linear(value, w[2 * c :], b[2 * c :])

        batch, len_q, _ = q.shape
        head_dim = c // self.num_heads
        q = q.view(batch, len_q, self.num_heads, head_dim).transpose(1, 2)  # (B, h, Lq, d)
        k = k.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)  # (B, h, Lk, d)
        v = v.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)  # (B, h, Lk, d)
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk), True = attend
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask & attn_mask  # broadcast to (B, 1, Lq, Lk)
        dropout = self.dropout if self.training else 0.0
        if self.record_weights:
            scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)  # (B, h, Lq, Lk)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            self.weights = scores.softmax(-1)  # padded keys: weight 0
            out = F.dropout(self.weights, dropout, self.training) @ v  # (B, h, Lq, d)
        elif q.device.type == "cpu" and (dropout > 0 or q.dtype == torch.bfloat16):
            out = _explicit_attention(q, k, v, mask, dropout)  # (B, h, Lq, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, h, Lq, d)
        out = out.transpose(1, 2).reshape(batch, len_q, c)  # (B, Lq, C)
        return self.out_proj(out)


def _activation(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    raise ValueError(f"activation must be 'relu' or 'gelu', got {name!r}")


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention + FFN over the flattened feature map; post-norm unless ``normalize_before``."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def forward(self, src: Tensor, key_padding_mask: Tensor | None, pos: Tensor | None) -> Tensor:
        """src, pos: (B, HW, C); key_padding_mask: (B, HW) True on padding -> (B, HW, C)."""
        if self.normalize_before:
            src2 = self.norm1(src)
            q = _with_pos(src2, pos)
            src = src + self.dropout1(self.self_attn(q, q, src2, key_padding_mask))
            src2 = self.norm2(src)
            return src + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(src2)))))
        q = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, key_padding_mask)))
        src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, FFN."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        pos: Tensor | None,
        query_pos: Tensor | None,
        self_attn_mask: Tensor | None = None,
        **cross_inputs: Any,
    ) -> Tensor:
        """tgt, query_pos: (B, Q, C); memory, pos: (B, HW, C); mask (B, HW); self_attn_mask (Q, Q) -> (B, Q, C).

        ``cross_inputs``: what a cross-attention other than the paper's reads besides the memory, passed on to
        ``multihead_attn`` (the deformable one of :mod:`detr.options.deformable`: where to sample); none here."""
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, q, tgt2, attn_mask=self_attn_mask))
            tgt2 = self.norm2(tgt)
            tgt2 = self.multihead_attn(
                _with_pos(tgt2, query_pos), _with_pos(memory, pos), memory, memory_key_padding_mask, **cross_inputs
            )
            tgt = tgt + self.dropout2(tgt2)
            tgt2 = self.norm3(tgt)
            return tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(tgt2)))))
        q = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, attn_mask=self_attn_mask)))
        tgt2 = self.multihead_attn(
            _with_pos(tgt, query_pos), _with_pos(memory, pos), memory, memory_key_padding_mask, **cross_inputs
        )
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src: Tensor, key_padding_mask: Tensor | None, pos: Tensor | None) -> Tensor:
        """(B, HW, C) -> (B, HW, C)."""
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        pos: Tensor | None,
        query_pos: Tensor | None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt (B, Q, C), memory (B, HW, C) -> (num_layers, B, Q, C), each output normed.

        The norm is applied to what each layer outputs, not to what the next layer
        receives (the reference behaviour).
        """
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos, self_attn_mask)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)


class Transformer(nn.Module):
    """Encoder-decoder of DETR; exposes ``d_model`` as the API document requires.

    Defaults are the paper's: 6 + 6 layers, d_model 256, 8 heads, FFN 2048,
    dropout 0.1, ReLU, post-norm (``normalize_before=False``, in which case the
    encoder has no final norm, as in the reference).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        if num_decoder_layers < 1:
            raise ValueError(f"num_decoder_layers must be >= 1, got {num_decoder_layers}")
        if num_encoder_layers < 0:
            raise ValueError(f"num_encoder_layers must be >= 0, got {num_encoder_layers}")
        enc_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.encoder = TransformerEncoder(
            enc_layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None
        )
        dec_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.decoder = TransformerDecoder(dec_layer, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        self.num_decoder_layers = num_decoder_layers
        self._spec = {
            "d_model": d_model,
            "nhead": nhead,
            "num_encoder_layers": num_encoder_layers,
            "num_decoder_layers": num_decoder_layers,
            "dim_feedforward": dim_feedforward,
            "dropout": dropout,
            "activation": activation,
            "normalize_before": normalize_before,
        }
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def spec(self) -> dict[str, object]:
        """The constructor arguments that build this transformer again (its weights apart)."""
        return dict(self._spec)

    def encode(self, src: Tensor, mask: Tensor | None, pos_embed: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Flatten and encode: src (B, C, H, W), mask (B, H, W) or None (no padding), pos_embed
        (B, C, H, W) -> memory (B, HW, C), key padding mask (B, HW) or None, position encoding (B, HW, C)."""
        src = src.flatten(2).transpose(1, 2)  # (B, HW, C)
        pos = pos_embed.flatten(2).transpose(1, 2)  # (B, HW, C)
        key_padding_mask = None if mask is None else mask.flatten(1)  # (B, HW)
        return self.encoder(src, key_padding_mask, pos), key_padding_mask, pos

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None,
        query_embed: Tensor,
        pos_embed: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Run encoder and decoder (the reference code's call).

        Args:
            src: (B, C, H, W) projected features.
            mask: (B, H, W) bool, True on padding; None when nothing is padded.
            query_embed: (Q, C) learned query positions.
            pos_embed: (B, C, H, W) position encoding of the features.

        Returns:
            hs: (num_decoder_layers, B, Q, C) normed decoder outputs, final layer last.
            memory: (B, C, H, W) encoder output.
        """
        batch, c, h, w = src.shape
        memory, key_padding_mask, pos = self.encode(src, mask, pos_embed)
        query_pos = query_embed.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, C)
        tgt = query_pos.new_zeros(query_pos.shape)  # queries start empty, their position is all they know
        hs = self.decoder(tgt, memory, key_padding_mask, pos, query_pos)
        return hs, memory.transpose(1, 2).reshape(batch, c, h, w)  # (B, HW, C) -> (B, C, H, W)
