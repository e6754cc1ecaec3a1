"""The CNN trunks of models/cnn.py: shapes, no BatchNorm, per-image independence, gradients, FLOPs, errors.

Small images (8 x 16 x 16) except where the size is the point (FLOPs at 32 x 32).
"""
import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from config import ConfigError
from models.cnn import CNN_NAMES, NORMS, POOLS, build_cnn

C, H, W = 8, 16, 16
TV = ("tv:resnet18", "tv:mobilenet_v3_small")  # fast on CPU at 16 x 16; other families: see the last tests
OWN_CASES = [(n, norm, pool) for n in CNN_NAMES for norm in NORMS for pool in POOLS]
ALL_CASES = OWN_CASES + [(n, norm, "end") for n in TV for norm in NORMS]
OUT_FEATURES = {"vgg": 64, "vgg_wide": 256, "resnet": 64, "tv:resnet18": 512, "tv:mobilenet_v3_small": 576}




def case_id(case):
    return "-".join(case)


def counted_flops(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def batchnorms(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_shapes_and_no_batchnorm(case):
    name, norm, pool = case
    cnn = build_cnn(name, C, norm=norm, pool=pool)
    assert cnn.out_features == OUT_FEATURES[name] and cnn.in_channels == C
    assert batchnorms(cnn) == []  # BatchNorm would share statistics across token images (causality)
    for mode in (True, False):
        assert cnn.train(mode)(torch.randn(3, C, H, W)).shape == (3, cnn.out_features)
    assert cnn(torch.randn(2, C, 20, 12)).shape == (2, cnn.out_features)  # non-square, odd after pooling


def assert_per_image(cnn: nn.Module, x: torch.Tensor) -> None:
    """Image 0's output ignores the other images of the batch, in train and in eval mode."""
    for mode in (True, False):
        cnn.train(mode)
        torch.manual_seed(0)  # same dropout / stochastic-depth draws in both forwards
        y = cnn(x)
        x2 = x.clone()
        x2[1:] = 3 * torch.randn_like(x2[1:]) + 1  # other images, other statistics
        torch.manual_seed(0)
        torch.testing.assert_close(cnn(x2)[0], y[0], msg=f"train={mode}: image 0 depends on the others")
        # The gradient of image 0's features with respect to every other image is exactly zero.
        xg = x.clone().requires_grad_()
        torch.manual_seed(0)
        cnn(xg)[0].sum().backward()
        assert xg.grad[1:].abs().max() == 0, f"train={mode}: gradient flows from image 0 into other images"
        assert xg.grad[0].abs().max() > 0
        if mode is False:  # eval: alone or in a batch, the same features
            torch.testing.assert_close(cnn(x[:1])[0], y[0], atol=1e-5, rtol=1e-4)


# efficientnet_b0 adds stochastic depth in train mode (per image, so allowed).
@pytest.mark.parametrize("case", ALL_CASES + [("tv:efficientnet_b0", "layer", "end")], ids=case_id)
def test_images_are_independent(case):
    name, norm, pool = case
    torch.manual_seed(1)
    assert_per_image(build_cnn(name, C, norm=norm, pool=pool), torch.randn(4, C, H, W))


def test_independence_check_catches_batchnorm():
    # The test above must be able to fail: torchvision's resnet18 keeps BatchNorm and mixes images in train mode.
    cnn = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    with pytest.raises(AssertionError, match="train=True"):
        assert_per_image(cnn, torch.randn(4, 3, H, W))


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_every_parameter_gets_a_gradient(case):
    name, norm, pool = case
    torch.manual_seed(2)
    cnn = build_cnn(name, C, norm=norm, pool=pool).eval()  # eval: no stochastic depth dropping a block
    y = cnn(torch.randn(4, C, H, W))
    (y * torch.randn_like(y)).sum().backward()
    for n, p in cnn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().max() > 0, f"{n} got a zero gradient"


def test_architectures_follow_the_study():
    def convs(cnn):
        return [(m.in_channels, m.out_channels, m.kernel_size, m.padding)
                for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    k3 = ((3, 3), (1, 1))
    assert convs(build_cnn("vgg", 8)) == [(8, 64, *k3)] + [(64, 64, *k3)] * 8
    wide = [(8, 64)] + [(64, 64)] * 3 + [(64, 128)] + [(128, 128)] * 3 + [(128, 128)] * 2 + [(128, 256)]
    assert convs(build_cnn("vgg_wide", 8)) == [(i, o, *k3) for i, o in wide]
    resnet = build_cnn("resnet", 8)
    assert convs(resnet) == [(8, 64, *k3)] + [(64, 64, *k3)] * 8  # stem + 4 basic blocks of 2 convs
    assert sum(isinstance(m, torchvision.models.resnet.BasicBlock) for m in resnet.modules()) == 4
    narrow = [(m.in_channels, m.out_channels) for m in build_cnn("vgg_wide", 8, width=16).modules()
              if isinstance(m, nn.Conv2d)]
    assert narrow == [(i * 16 // 64 if i != 8 else 8, o * 16 // 64) for i, o in wide]  # every layer scaled
    assert build_cnn("resnet", 8, width=32).out_features == 32 and build_cnn("vgg", 8, width=16).out_features == 16
    for name in CNN_NAMES:  # "end": all convs at full resolution; "stages": 2 max-pools
        assert sum(isinstance(m, nn.MaxPool2d) for m in build_cnn(name, 8).modules()) == 0
        assert sum(isinstance(m, nn.MaxPool2d) for m in build_cnn(name, 8, pool="stages").modules()) == 2


def test_torchvision_stem_and_head():
    tv = build_cnn("tv:resnet18", C)
    assert tv.backbone.conv1.in_channels == C  # torchvision's module names are kept
    assert not any(isinstance(m, nn.Linear) for m in tv.modules())  # the classifier is gone
    mobile = build_cnn("tv:mobilenet_v3_small", C)
    assert mobile.backbone.features[0][0].in_channels == C


@pytest.mark.parametrize("name", [*CNN_NAMES, "tv:resnet18"])
def test_channels_last_input(name):
    cnn = build_cnn(name, C, norm="group").eval()
    x = torch.randn(3, C, H, W)
    torch.testing.assert_close(cnn(x.to(memory_format=torch.channels_last)), cnn(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CNN_NAMES)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("width", [64, 16])
def test_forward_flops_equal_flop_counter(name, pool, width):
    cnn = build_cnn(name, C, pool=pool, width=width)
    for h, w in [(16, 16), (20, 12), (32, 32)]:
        assert cnn.forward_flops(h, w) == counted_flops(cnn, torch.randn(1, C, h, w)), (h, w)


def test_flops_per_image_at_8x32x32():
    f = {(n, p): build_cnn(n, 8, pool=p).forward_flops(32, 32) for n in CNN_NAMES for p in POOLS}
    # STUDY.md: "about 0.6 GFLOP forward" per token for the 9-layer 64-channel VGG on 32 x 32 images.
    # Exactly 613,416,960 = 2*9*32*32*(8*64 + 8*64*64): 2.4x GPT-2 small's ~2*124M = 0.25 GFLOP per token.
    assert 0.55e9 < f["vgg", "end"] < 0.65e9
    assert f == {
        ("vgg", "end"): 613_416_960, ("vgg", "stages"): 231_211_008,
        ("vgg_wide", "end"): 2_500_853_760, ("vgg_wide", "stages"): 575_668_224,
        ("resnet", "end"): 613_416_960, ("resnet", "stages"): 245_366_784,  # = vgg: same 9 convs
    }


@pytest.mark.parametrize("name", TV)
def test_torchvision_flops_counted_and_cached(name):
    cnn = build_cnn(name, C)
    flops = cnn.forward_flops(H, W)
    assert flops == counted_flops(cnn, torch.randn(1, C, H, W)) > 0
    assert cnn._flops == {(H, W): flops}  # counted once per size
    assert cnn.forward_flops(32, 32) > flops


@pytest.mark.slow
def test_torchvision_families_build():
    # One model of each torchvision family, built on the meta device (no memory, no arithmetic) at 224 x 224:
    # 5-10 s on 2 CPU cores, hence slow.
    # regnets cannot be built on meta (their builder calls .tolist() on a tensor): one on CPU instead.
    for name in ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
                 "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "resnext50_32x4d", "shufflenet_v2_x0_5",
                 "squeezenet1_1", "swin_t", "vgg11_bn", "vit_b_32", "wide_resnet50_2", "regnet_x_400mf"):
        with torch.device("cpu" if name.startswith("regnet") else "meta"):
            cnn = build_cnn("tv:" + name, C, norm="layer").train()
            x = torch.randn(2, C, 224, 224)
            assert cnn(x).shape == (2, cnn.out_features), name
        assert batchnorms(cnn) == [], name
        assert cnn.forward_flops(224, 224) > 0


def test_unknown_choices_are_config_errors():
    with pytest.raises(ConfigError, match="vgg, vgg_wide, resnet.*tv:<name>"):
        build_cnn("vgg16", C)
    with pytest.raises(ConfigError, match="none, group, layer"):
        build_cnn("vgg", C, norm="batch")
    with pytest.raises(ConfigError, match="end, stages"):
        build_cnn("vgg", C, pool="middle")
    with pytest.raises(ConfigError, match="tv:resnet18"):
        build_cnn("tv:resnet9000", C)
    with pytest.raises(ConfigError, match="'end'"):
        build_cnn("tv:resnet18", C, pool="stages")
    with pytest.raises(ConfigError, match="cnn_width 64"):
        build_cnn("tv:resnet18", C, width=32)
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_cnn("vgg", C, width=10)
    with pytest.raises(ConfigError, match="in_channels"):
        build_cnn("vgg", 0)
