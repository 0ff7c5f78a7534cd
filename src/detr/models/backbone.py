"""ResNet feature extractor for DETR, built on torchvision's ResNet.

As in the DETR reference code, batch norm is replaced by ``FrozenBatchNorm2d``
(fixed ImageNet statistics and affine parameters), and the stem and ``layer1``
are frozen; ``dilation=True`` gives the DC5 variant (stride 16 in ``layer4``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from ..hub.checkpoints import read_state_dict
from ..hub.download import download
from ..hub.pretrained import RESNET_IMAGENET_WEIGHTS
from ..processing.checks import is_positive_int


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen batch norm whose convolution applies it (see :class:`ConvFrozenBN2d`): passes its input through.

    It keeps the parameters and buffers, so checkpoints keep their keys.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x


def _scaled(weight: Tensor, scale: Tensor) -> Tensor:
    """(C_out, C_in, k, k) conv weight times a (C_out,) per-output-channel scale."""
    return weight * scale[:, None, None, None]


class _ScaledWeightConv(torch.autograd.Function):
    """conv2d(x, weight * scale, shift) that keeps only x, weight and scale for the backward.

    Autograd through ``weight * scale`` would keep the scaled copy of every weight alive until
    the backward; here it is recomputed there instead (cheap: weights are small next to features).
    """

    @staticmethod
    def forward(ctx, x, weight, scale, shift, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.save_for_backward(x, weight, scale)
        ctx.conv = (stride, padding, dilation, groups)
        return F.conv2d(x, _scaled(weight, scale), shift, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        # under autocast the forward ran in x's dtype (bf16): so must the backward (the weight is kept fp32)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad.to(x.dtype),
            x,
            _scaled(weight, scale).to(x.dtype),
            None,
            stride,
            padding,
            dilation,
            False,
            [0] * len(stride),
            groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )
        grad_weight = _scaled(grad_w.to(weight.dtype), scale) if grad_w is not None else None
        return grad_x, grad_weight, None, None, None, None, None, None


class ConvFrozenBN2d(nn.Conv2d):
    """A convolution followed by a frozen batch norm, computed as one convolution.

    conv(x, W) * s + b = conv(x, W * s) + b for the per-channel scale s and shift b of the frozen
    statistics, so the batch norm's two passes over the feature map (and one in the backward) go
    away while W keeps training. The batch norm module stays where it was, as a
    :class:`FoldedFrozenBatchNorm2d`, and is only referenced here.
    """

    def __init__(self, conv: nn.Conv2d, bn: FoldedFrozenBatchNorm2d) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is not None,
        )
        self.weight, self.bias = conv.weight, conv.bias
        self._bn = (bn,)  # a tuple, not a submodule: the state dict keeps the reference layout

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """(C_out,) scale and shift of the batch norm, the conv's own bias included in the shift."""
        (bn,) = self._bn
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        shift = bn.bias - bn.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_shift()
        zero_padded = self.padding_mode == "zeros" and not isinstance(self.padding, str)  # always so in ResNets
        if zero_padded and torch.is_grad_enabled() and self.weight.requires_grad:
            return _ScaledWeightConv.apply(
                x, self.weight, scale, shift, self.stride, self.padding, self.dilation, self.groups
            )
        return self._conv_forward(x, _scaled(self.weight, scale), shift)

    def folded(self) -> nn.Conv2d:
        """A plain convolution with the batch norm folded into its weights (for inference)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=True,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            scale, shift = self.scale_shift()
            conv.weight.copy_(_scaled(self.weight, scale))
            conv.bias.copy_(shift)
        return conv


def conv_norm_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, norm name) of every convolution directly followed by a batch norm in a
    torchvision ResNet: its naming puts ``bnN`` right after ``convN``, and a ``downsample`` is
    ``Sequential(conv, bn)``."""
    pairs = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if not isinstance(child, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                continue
            conv_name = "conv" + name[2:] if name.startswith("bn") else str(int(name) - 1) if name.isdigit() else None
            if conv_name is not None and isinstance(getattr(parent, conv_name, None), nn.Conv2d):
                pairs.append((parent, conv_name, name))
    return pairs


def fuse_frozen_batch_norms(module: nn.Module) -> int:
    """Make every (conv, frozen batch norm) pair of a torchvision ResNet one :class:`ConvFrozenBN2d`,
    in place; returns how many. Parameter names do not change."""
    fused = 0
    for parent, conv_name, name in conv_norm_pairs(module):
        child, conv = getattr(parent, name), getattr(parent, conv_name)
        if type(child) is FrozenBatchNorm2d and type(conv) is nn.Conv2d:
            bn = FoldedFrozenBatchNorm2d(child.weight.shape[0], eps=child.eps)
            bn.load_state_dict(child.state_dict())
            setattr(parent, name, bn)
            setattr(parent, conv_name, ConvFrozenBN2d(conv, bn))
            fused += 1
    return fused


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    raise ValueError(f"norm must be 'frozen_bn' (reference) or 'bn' (trainable batch norm), got {norm!r}")


def _narrow(
    resnet: torchvision.models.ResNet, stem: int, norm_layer: Callable[[int], nn.Module], dilation: bool
) -> None:
    """Rebuild ``resnet``'s stem and stages in place with ``stem`` channels instead of 64 (each stage twice the
    last, as in the paper's network), by torchvision's own stage builder; the blocks, their counts and strides,
    and the initialisation are torchvision's. Parameter names do not change."""
    block = type(resnet.layer1[0])
    resnet.inplanes, resnet.dilation = stem, 1  # the builder's running state, as ResNet.__init__ starts it
    resnet.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    resnet.bn1 = norm_layer(stem)
    for i, stage in enumerate(("layer1", "layer2", "layer3", "layer4")):
        blocks = len(getattr(resnet, stage))
        setattr(
            resnet,
            stage,
            resnet._make_layer(block, stem * 2**i, blocks, stride=1 if i == 0 else 2, dilate=i == 3 and dilation),
        )
    for module in resnet.modules():  # ResNet.__init__'s initialisation, for the new layers
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResNetBackbone(nn.Module):
    """ResNet up to ``layer4``: (B, 3, H, W) -> (B, num_channels, ceil(H/32), ceil(W/32)).

    Args:
        name: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``.
        pretrained: load torchvision's ImageNet weights (a download on first use).
        dilation: replace the stride of ``layer4`` by dilation (DC5, output stride 16).
        train_backbone: if False, every backbone parameter is frozen (the reference's
            ``lr_backbone=0``); otherwise only the stem and ``layer1`` are, when
            ``freeze_stem`` (the reference; turn it off to train from scratch).
        num_layers: 4 (the reference), or 3 / 2 to stop after ``layer3`` / ``layer2``: stride 16 / 8
            and half / a quarter of the channels, finer features for small images at less cost.
        norm: ``"frozen_bn"`` (reference) or ``"bn"`` (trainable batch norm, for training
            from scratch where no pretrained statistics exist). Frozen batch norms are computed
            inside their convolutions (:class:`ConvFrozenBN2d`, same result and parameter names).
        channels_last: keep weights and feature maps in channels-last memory format, which
            oneDNN (CPU) and cuDNN convolutions run fastest in; the result is the same.
        blocks_per_stage: keep only the first N residual blocks of every stage (all of a stage that has
            fewer; ``None``: all, the reference: 2 per stage in a ResNet-18). Fewer blocks make a shallower,
            cheaper network with the same strides and channels, for training from scratch on few cores;
            the kept blocks load their ImageNet weights as usual.
        width: every stage's channels (the stem's 64 too) times this, in (0, 1]: 0.5 makes a ResNet-18 of
            32 / 64 / 128 / 256 channels, about a quarter of the arithmetic, with the same strides, depth and
            receptive field (for training from scratch on few cores; ImageNet weights exist for 1 only).
        pyramid: with ``num_layers`` 2 or 3, run the deeper stages too (up to ``layer4``) and add their features
            top-down into the output stage's, as a feature pyramid does (FPN, Lin et al. 2017; torchvision's
            :class:`~torchvision.ops.FeaturePyramidNetwork`, its finest output): the output keeps its stride
            and channels, and each of its cells reads what a stride-32 cell sees (a ResNet-18 cut at stride 8
            sees 99 px around a cell; objects larger than that are seen whole only through the coarser stages).
            Not in the paper; its layers are ``pyramid.*``.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = False,
        dilation: bool = False,
        train_backbone: bool = True,
        norm: str = "frozen_bn",
        freeze_stem: bool = True,
        num_layers: int = 4,
        channels_last: bool = True,
        blocks_per_stage: int | None = None,
        width: float = 1.0,
        pyramid: bool = False,
    ) -> None:
        super().__init__()
        if name not in RESNET_IMAGENET_WEIGHTS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNET_IMAGENET_WEIGHTS)}")
        if num_layers not in (2, 3, 4):
            raise ValueError(f"num_layers must be 4 (up to layer4, the reference), 3 or 2, got {num_layers}")
        if dilation and num_layers != 4:
            raise ValueError("dilation (DC5) changes layer4, so it needs num_layers=4")
        if pyramid and num_layers == 4:
            raise ValueError("pyramid adds the stages after the output one: it needs num_layers 2 or 3, not 4")
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"dilation (DC5) needs a bottleneck ResNet (resnet50, resnet101), not {name}")
        if blocks_per_stage is not None and not is_positive_int(blocks_per_stage):
            raise ValueError(
                f"blocks_per_stage must be a positive number of residual blocks or None (all), got {blocks_per_stage!r}"
            )
        if not (isinstance(width, (int, float)) and 0 < width <= 1 and float(64 * width).is_integer()):
            raise ValueError(
                f"width must be in (0, 1] with 64 x width a whole number of channels (e.g. 0.25, 0.5, 0.75), "
                f"got {width!r}"
            )
        if pretrained and width != 1:
            raise ValueError(
                f"ImageNet weights exist for the full width only: width {width} trains from scratch "
                "(pretrained_backbone=False, detr train --no-pretrained-backbone)"
            )
        norm_layer = _norm_layer(norm)
        resnet = getattr(torchvision.models, name)(
            weights=None,
            replace_stride_with_dilation=[False, False, dilation],
            norm_layer=norm_layer,
        )
        if width != 1:
            _narrow(resnet, int(64 * width), norm_layer, dilation)
        if pretrained:
            self._load_imagenet_weights(resnet, name)
        if blocks_per_stage is not None:
            for stage in ("layer1", "layer2", "layer3", "layer4"):
                # the first block of a stage changes stride and width; the later ones keep both, so any cut holds
                setattr(resnet, stage, getattr(resnet, stage)[:blocks_per_stage])
        self.blocks_per_stage = blocks_per_stage
        self.width = width
        widths = [64, 128, 256, 512] if name in ("resnet18", "resnet34") else [256, 512, 1024, 2048]
        stage_channels = [int(c * width) for c in widths]  # channels of layer1 ... layer4
        self.level_channels = stage_channels[:num_layers]  # channels of layer1 ... layerN
        self.num_channels = self.level_channels[-1]
        self.name = name
        self.dilation = dilation
        self.train_backbone, self.norm, self.freeze_stem, self.num_layers = (
            train_backbone,
            norm,
            freeze_stem,
            num_layers,
        )
        self.stride = 16 if dilation else 2 ** (num_layers + 1)
        computed = 4 if pyramid else num_layers  # the stages the forward runs
        for pname, param in resnet.named_parameters():
            in_stem = not pname.startswith(("layer2", "layer3", "layer4"))
            trainable = train_backbone and not (freeze_stem and in_stem)
            param.requires_grad_(trainable)
        # every stage's output is returned (they are computed anyway): the mask head reads layer1-3
        self.body = IntermediateLayerGetter(
            resnet, return_layers={f"layer{i}": f"layer{i}" for i in range(1, computed + 1)}
        )
        # output stage ... layer4, top-down into the output stage's channels; each conv followed by the backbone's
        # norm: without it, from scratch at lr 1e-3 (scales, 160 px), the loss stopped falling at the warm-up's
        # peak and stayed there (AP 0.004 after 9 minutes)
        self.pyramid = None
        if pyramid:
            self.pyramid = FeaturePyramidNetwork(
                stage_channels[num_layers - 1 :], self.num_channels, norm_layer=norm_layer
            )
            # only the finest output is read: the coarser levels' output convs would run for nothing and leave
            # parameters without a gradient (which DDP refuses unless told to look for them)
            for i in range(1, len(self.pyramid.layer_blocks)):
                self.pyramid.layer_blocks[i] = nn.Identity()
            self.pyramid.requires_grad_(train_backbone)
        if norm == "frozen_bn":
            fuse_frozen_batch_norms(self.body)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def spec(self) -> dict[str, object]:
        """The constructor arguments that build this backbone again (its weights apart)."""
        return {
            "name": self.name,
            "dilation": self.dilation,
            "train_backbone": self.train_backbone,
            "norm": self.norm,
            "freeze_stem": self.freeze_stem,
            "num_layers": self.num_layers,
            "channels_last": self.channels_last,
            "blocks_per_stage": self.blocks_per_stage,
            "width": self.width,
            "pyramid": self.pyramid is not None,
        }

    @staticmethod
    def _load_imagenet_weights(resnet: nn.Module, name: str) -> None:
        """torchvision's ImageNet weights, through the shared hub cache (fails fast offline)."""
        instead = "or start without ImageNet weights: detr train --no-pretrained-backbone (pretrained_backbone=False)"
        state_dict = read_state_dict(download(RESNET_IMAGENET_WEIGHTS[name].url, instead=instead))
        resnet.load_state_dict(state_dict)  # FrozenBatchNorm2d drops num_batches_tracked itself

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised images -> (B, num_channels, H', W') features."""
        return self.levels(x)[-1]

    def levels(self, x: Tensor) -> list[Tensor]:
        """x: (B, 3, H, W) -> the output of every stage, ``layer1`` (stride 4, ``level_channels[0]``)
        to the last (the features :meth:`forward` returns)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        stages = list(self.body(x).values())  # layer1 ... (layer4 with the pyramid)
        if self.pyramid is None:
            return stages
        out = self.num_layers - 1  # the output stage's index
        # the pyramid's outputs, finest first: the output stage's, with every deeper stage's added top-down
        fused = self.pyramid(OrderedDict((str(i), stages[i]) for i in range(out, len(stages))))
        return [*stages[:out], fused[str(out)]]
