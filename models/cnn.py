"""CNN trunks that read token images: (N, C, H, W) -> (N, out_features), N = B*T images of a batch.

Shapes: N images (the B*T token images of a batch, flattened), C image channels, H x W image size,
F = out_features. Every CNN is a trunk of convolutions followed by global average pooling over H, W;
the linear head to the vocabulary belongs to the language model, not to this file.

    cnn = build_cnn("vgg", in_channels=8, norm="none", pool="end")
    feats = cnn(images)               # (N, 8, 32, 32) -> (N, 64)
    cnn.forward_flops(32, 32)         # 613_416_960 forward FLOPs per image

Names (the registry TRUNKS, plus "tv:<name>"):
- "vgg": the original study's VGG: 9 convs 3x3, C->64 then 8 x 64->64, ReLU after each -> R^64.
- "vgg_wide": 11 convs: C->64, 3 x 64->64, 64->128, 3 x 128->128, 128->128, 128->128, 128->256 -> R^256.
- "resnet": a conv3x3 stem C->64 at full resolution, then 4 torchvision BasicBlocks of 64 channels:
  1 + 4*2 = 9 convs, the depth and (with pool="end") exactly the FLOPs of "vgg" -> R^64.
- "tv:<name>": a torchvision classification backbone (torchvision.models.get_model(name, weights=None),
  never pretrained) with its first Conv2d replaced to take C channels and its classifier removed;
  F = the classifier's in_features (mobilenet_v3: its whole 2-linear classifier goes; googlenet and
  inception_v3: their auxiliary heads too; vgg, alexnet: their 7x7 / 6x6 pooling becomes global).
  It keeps its ImageNet stem (most downsample 4x to 32x overall), its dropout and stochastic depth
  (both per image), and some need a minimum image size (convnext >= 32, vit exactly 224).

Pooling placement (POOLS), for vgg / vgg_wide / resnet; the DEFAULT is "end":
- "end": the original's reading: every conv at full H x W, then global average pooling.
- "stages": 2x2 max-pools between stages ('M' in the layer lists below): about 4x fewer FLOPs per
  later stage (vgg at 32x32: 0.61 -> 0.23 GFLOP). Torchvision backbones pool on their own ("end" only).

Normalisation (NORMS) -- never BatchNorm. The CNN runs over the B*T token images of a batch at once.
BatchNorm in train mode normalises with statistics over all N images, so the features of token t
would depend on the images of other sequences AND of later positions t' > t of its own sequence: the
prediction at t would see the future and the loss would be a leak, not a result. Every norm here is
per image:
- "none": no normalisation (the original VGG). Convs keep their bias; where a torchvision block
  expects a norm after a bias-free conv (BasicBlock, backbones), a learnable per-channel bias
  (ChannelBias, BatchNorm's shift without its statistics) takes its place. Without a norm the
  residual sums of "resnet" grow the activation scale (about 3x in std over its 4 blocks at init);
  deep torchvision backbones should use "group" or "layer".
- "group": GroupNorm with gcd(32, channels) groups (32 for 64..256 channels).
- "layer": GroupNorm with one group = LayerNorm over (C, H, W) of each image.
Every BatchNorm of a torchvision backbone or block is replaced by the chosen one.

FLOPs (forward_flops): 2 per multiply-add, convolutions and linears only (the convention of
torch.utils.flop_counter.FlopCounterMode); biases, norms, ReLUs, pooling, residual adds are left out.
Analytic for vgg / vgg_wide / resnet; for tv: backbones counted once per (H, W) by FlopCounterMode on
the meta device (no memory, no compute) and cached.

Inputs may be channels_last (often faster for CPU/GPU convs); nothing here forces .contiguous().
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torchvision
from torch import Tensor
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.resnet import BasicBlock

from schema import ConfigError

NORMS = ("none", "group", "layer")
POOLS = ("end", "stages")
TV_PREFIX = "tv:"



class ChannelBias(nn.Module):
    """A learnable per-channel bias: what norm="none" leaves of a BatchNorm (its shift, no statistics)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(-1, *[1] * (x.ndim - 2))  # (N, C, ...) + (C, 1, ...)


def norm_layer(norm: str, channels: int) -> nn.Module:
    """A per-image normalisation of `channels` channels; never statistics across images (see docstring)."""
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)  # largest power of 2 <= 32 dividing channels
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "none":
        return ChannelBias(channels)
    raise ConfigError(f"model.cnn_norm: unknown cnn_norm {norm!r}; choose one of {', '.join(NORMS)}")


class CNN(nn.Module):
    """The contract: forward (N, C, H, W) -> (N, out_features), each image on its own; forward_flops."""

    in_channels: int   # C of the images it reads
    out_features: int  # F, the width of the pooled feature vector

    def forward_flops(self, height: int, width: int) -> float:
        """Forward FLOPs per image of height x width (2 per multiply-add; convs and linears only)."""
        raise NotImplementedError


def _conv_flops(conv: nn.Conv2d, h: int, w: int) -> tuple[float, int, int]:
    """FLOPs of one conv on one h x w image, and the output size: 2 * k*k*Cin/groups * Cout * Hout * Wout."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    macs = kh * kw * conv.in_channels // conv.groups * conv.out_channels * h_out * w_out
    return 2.0 * macs, h_out, w_out


class SequentialCNN(CNN):
    """Our own trunks (vgg, vgg_wide, resnet): a flat nn.Sequential `features`, then global average pooling."""

    def __init__(self, features: nn.Sequential, in_channels: int, out_features: int):
        super().__init__()
        self.features = features
        self.in_channels, self.out_features = in_channels, out_features
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init on fan_in keeps the activation scale through ReLU convs, which the norm="none"
                # VGG relies on (PyTorch's default init shrinks it ~70x over the 9 convs of "vgg").
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))  # (N, C, H, W) -> (N, F, H', W') -> (N, F)

    def forward_flops(self, height: int, width: int) -> float:
        flops, h, w = 0.0, height, width
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                f, h, w = _conv_flops(layer, h, w)
                flops += f
            elif isinstance(layer, nn.MaxPool2d):
                h, w = h // 2, w // 2  # our only pool: kernel 2, stride 2, floor
            elif isinstance(layer, BasicBlock):
                f1, h1, w1 = _conv_flops(layer.conv1, h, w)
                f2, h1, w1 = _conv_flops(layer.conv2, h1, w1)
                flops += f1 + f2
                if layer.downsample is not None:  # a 1x1 conv on the shortcut where the width changes
                    flops += _conv_flops(layer.downsample[0], h, w)[0]
                h, w = h1, w1
        return flops


def _conv_block(cin: int, cout: int, norm: str) -> list[nn.Module]:
    """conv3x3 -> norm -> ReLU; the conv has a bias only without a norm (a norm's shift makes it redundant)."""
    if norm == "none":
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True)]


def _build_vgg(cfg: list[int | str], in_channels: int, norm: str) -> SequentialCNN:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))  # (N, c, H, W) -> (N, c, H/2, W/2)
        else:
            layers += _conv_block(c, v, norm)
            c = v
    return SequentialCNN(nn.Sequential(*layers), in_channels, c)


def _build_resnet(cfg: list[int | str], in_channels: int, norm: str) -> SequentialCNN:
    # No 7x7 stride-2 stem and no max-pool: on 32 x 32 token images they would throw away 15/16 of the
    # pixels before the first block. The stem has the width of the first block.
    c = next(v for v in cfg if v != "M")
    layers: list[nn.Module] = _conv_block(in_channels, c, norm)
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        downsample = None
        if v != c:  # the shortcut must change width too (torchvision's convention: conv1x1 + norm)
            downsample = nn.Sequential(nn.Conv2d(c, v, 1, bias=False), norm_layer(norm, v))
        layers.append(BasicBlock(c, v, downsample=downsample, norm_layer=partial(norm_layer, norm)))
        c = v
    return SequentialCNN(nn.Sequential(*layers), in_channels, c)


class Trunk(NamedTuple):
    """A trunk of our own, as data: an int is a conv 3x3 (VGG) or a basic residual block (ResNet) of that
    many output channels at width 64; 'M' marks a stage boundary, a 2x2 max-pool with pool="stages",
    dropped with pool="end"."""
    layers: list[int | str]
    builder: Callable[[list[int | str], int, str], SequentialCNN]
    summary: str  # one line for --help


# The CNN registry: a new trunk is one entry (tv:<name> backbones come from torchvision's own registry).
TRUNKS: dict[str, Trunk] = {
    "vgg": Trunk([64, 64, 64, "M", 64, 64, 64, "M", 64, 64, 64], _build_vgg,
                 "the original's VGG, 9 convs 3x3: C->64, 8 x 64->64"),
    # STUDY.md: "8->64; three 64->64 and one 64->128; three 128->128; three more of which the last
    # produces 256": 1 + 3 + 1 + 3 + 3 = 11 convs. As in torchvision's VGGs a stage widens at its first
    # conv, so the stages are C->64 + 3 x 64->64 | 64->128 + 3 x 128->128 | 2 x 128->128 + 128->256.
    "vgg_wide": Trunk([64, 64, 64, 64, "M", 128, 128, 128, 128, "M", 128, 128, 256], _build_vgg,
                      "the original's wide VGG, 11 convs 3x3 widening 64 -> 128 -> 256"),
    # After the stem conv (conv 1): blocks of 2 convs; the first pool falls after conv 3, as in "vgg".
    "resnet": Trunk([64, "M", 64, 64, "M", 64], _build_resnet,
                    "a conv stem and 4 BasicBlocks of 64 channels (the depth and FLOPs of vgg)"),
}
CNN_NAMES: tuple[str, ...] = tuple(TRUNKS)
CNN_HELP = "; ".join(f"{name}: {t.summary}" for name, t in TRUNKS.items()) + \
    f"; {TV_PREFIX}<name>: a torchvision classifier (e.g. {TV_PREFIX}resnet18), first conv adapted, never pretrained"


class TorchvisionCNN(CNN):
    """A torchvision classification backbone, first conv adapted to C channels, classifier removed.

    `backbone` is the torchvision model itself, so its module names are torchvision's (backbone.conv1, ...).
    """

    def __init__(self, name: str, in_channels: int, norm: str):
        super().__init__()
        # googlenet / inception_v3 warn unless told which init to use: their truncated-normal one.
        kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        if getattr(model, "aux_logits", False):  # googlenet, inception_v3: auxiliary classifiers in train mode
            model.aux_logits = False
            for attr in ("aux1", "aux2", "AuxLogits"):
                if hasattr(model, attr):
                    setattr(model, attr, None)
        _replace_first_conv(model, in_channels)
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(parent, child_name, norm_layer(norm, child.num_features))
        self.in_channels, self.out_features = in_channels, _remove_classifier(model, name)
        self.backbone = model
        self._flops: dict[tuple[int, int], float] = {}

    def forward(self, x: Tensor) -> Tensor:
        y = self.backbone(x)  # (N, F), or (N, F, h, w) where the removed head used to pool (convnext, maxvit)
        if y.ndim == 4:
            y = y.mean(dim=(2, 3))
        return y.flatten(1)  # (N, F)

    def forward_flops(self, height: int, width: int) -> float:
        # Counted, not derived: backbones are too varied for a formula. On the meta device the count
        # needs no memory and no arithmetic, and consumes no random numbers (dropout, stochastic depth).
        if (height, width) not in self._flops:
            state = {k: t.to("meta") for k, t in [*self.named_parameters(), *self.named_buffers()]}
            x = torch.empty(1, self.in_channels, height, width, device="meta")
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                functional_call(self, state, (x,))
            self._flops[(height, width)] = float(counter.get_total_flops())
        return self._flops[(height, width)]


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d (resnets: conv1) for one taking in_channels, in place, keeping its name."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.groups != 1:
        raise ConfigError(f"the first convolution {name!r} is grouped ({conv.groups}); cannot adapt it")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv init
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _remove_classifier(model: nn.Module, name: str) -> int:
    """Replace the classification head by Identity; return the width of the pooled features it read."""
    heads = ("fc", "classifier", "head", "heads")  # torchvision's names for the classification head
    attr = next((a for a in heads if isinstance(getattr(model, a, None), nn.Module)), "")
    layers = getattr(model, attr).modules() if attr else ()
    first = next((m for m in layers if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if first is None:
        raise ConfigError(f"tv:{name}: no classifier (fc / classifier / head / heads) found to remove")
    if isinstance(first, nn.Linear):
        width, replacement = first.in_features, nn.Identity()
    else:  # squeezenet: a 1x1-conv head on the unpooled map, which the model then flattens; pool instead
        width, replacement = first.in_channels, nn.AdaptiveAvgPool2d(1)
    setattr(model, attr, replacement)
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size not in (1, (1, 1)):
        # vgg, alexnet pool to a 7x7 / 6x6 grid that the classifier flattens; pool globally instead.
        oh, ow = (pool.output_size,) * 2 if isinstance(pool.output_size, int) else pool.output_size
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        width //= oh * ow
    return width


def validate_cnn(name: str, norm: str = "none", pool: str = "end", width: int = 64) -> None:
    """Raise ConfigError unless build_cnn(name, ..., norm=norm, pool=pool, width=width) is a valid choice
    (builds nothing)."""
    if width <= 0 or width % 4:
        raise ConfigError(f"model.cnn_width must be a positive multiple of 4, got {width}")
    if norm not in NORMS:
        raise ConfigError(f"model.cnn_norm: unknown cnn_norm {norm!r}; choose one of {', '.join(NORMS)} (no BatchNorm: it "
                          "shares statistics across the token images of a batch, which breaks causality)")
    if pool not in POOLS:
        raise ConfigError(f"model.cnn_pool: unknown cnn_pool {pool!r}; choose one of {', '.join(POOLS)}")
    if name.startswith(TV_PREFIX):
        tv = name[len(TV_PREFIX):]
        known = torchvision.models.list_models(module=torchvision.models)
        if tv not in known:
            examples = ", ".join(TV_PREFIX + k for k in ("resnet18", "mobilenet_v3_small", "efficientnet_b0",
                                                         "regnet_x_400mf", "convnext_tiny"))
            raise ConfigError(f"unknown torchvision model {tv!r} in cnn {name!r}; {len(known)} classification "
                              f"models, e.g. {examples} "
                              "(all: torchvision.models.list_models(module=torchvision.models))")
        if pool != "end" or width != 64:
            raise ConfigError(f"cnn_pool and cnn_width apply to {', '.join(CNN_NAMES)}; torchvision backbones have "
                              "their own widths and downsample on their own: use cnn_pool 'end' and cnn_width 64")
    elif name not in CNN_NAMES:
        raise ConfigError(f"model.cnn: unknown cnn {name!r}; choose one of {', '.join(CNN_NAMES)}, "
                          f"or {TV_PREFIX}<name> for a torchvision backbone (e.g. {TV_PREFIX}resnet18)")


def build_cnn(name: str, in_channels: int, *, norm: str = "none", pool: str = "end", width: int = 64) -> CNN:
    """The one entry point: a CNN reading in_channels x H x W images; unknown choices are ConfigErrors.
    width: the channels of the first stage of vgg / vgg_wide / resnet (the original: 64); every layer
    is scaled by width / 64, so vgg_wide ends at 4 x width."""
    validate_cnn(name, norm, pool, width)
    if in_channels <= 0:
        raise ConfigError(f"a CNN needs at least one input channel, got in_channels={in_channels}")
    if name.startswith(TV_PREFIX):
        return TorchvisionCNN(name[len(TV_PREFIX):], in_channels, norm)
    trunk = TRUNKS[name]
    layers = [v if v == "M" else v * width // 64 for v in trunk.layers if pool == "stages" or v != "M"]
    return trunk.builder(layers, in_channels, norm)
