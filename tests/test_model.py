import pytest
import torch
from torch import nn

import resnet50
from resnet50 import UserError, create_model
from resnet50.model import Bottleneck, ZeroPadShortcut

PARAMS = {  # torchvision's published num_params for the ImageNet nets; the CIFAR nets as in He et al. sec. 4.2
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnet20_cifar": 269_722, "resnet32_cifar": 464_154, "resnet44_cifar": 658_586,
    "resnet56_cifar": 853_018, "resnet110_cifar": 1_727_962,
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,count", PARAMS.items())
def test_parameter_counts(name, count):
    with torch.device("meta"):
        assert n_params(create_model(name)) == count


def test_list_models_and_plain_twins_have_the_same_parameters_as_option_a():
    names = resnet50.list_models()
    assert {"resnet18", "resnet50", "resnet152", "resnet56_cifar", "plain56_cifar"} <= set(names)
    # option A shortcuts have no parameters, so a plain CIFAR net has exactly its residual twin's parameters
    assert n_params(create_model("plain20_cifar")) == n_params(create_model("resnet20_cifar"))


@pytest.mark.parametrize("size,c5", [(32, 1), (64, 2), (224, 7), (300, 10)])
def test_output_and_feature_shapes(size, c5):
    m = create_model("resnet50", num_classes=7).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = m.forward_pyramid(x)
        assert m(x).shape == (1, 7)
        assert m.forward_embedding(x).shape == (1, 2048)
    assert [f.shape[1] for f in feats.values()] == [256, 512, 1024, 2048]
    assert feats["C5"].shape[-1] == c5
    if size == 300:  # 300 -> 150 (conv1) -> 75 (pool, C2) -> 38 -> 19 -> 10
        assert [f.shape[-1] for f in feats.values()] == [75, 38, 19, 10]


def test_v1_and_v15_share_parameter_shapes_and_differ_in_stride_placement():
    v1, v15 = create_model("resnet50", variant="v1"), create_model("resnet50", variant="v1.5")
    assert [(k, v.shape) for k, v in v1.state_dict().items()] == [(k, v.shape) for k, v in v15.state_dict().items()]
    for name in ("layer2", "layer3", "layer4"):
        b1, b15 = getattr(v1, name)[0], getattr(v15, name)[0]
        assert (b1.conv1.stride, b1.conv2.stride) == ((2, 2), (1, 1))
        assert (b15.conv1.stride, b15.conv2.stride) == ((1, 1), (2, 2))
    assert v15.layer1[0].conv2.stride == (1, 1) and v15.layer1[1].conv2.stride == (1, 1)
    assert create_model("resnet50").cfg.variant == "v1.5"  # the default
    # same weights, different function
    v15.load_state_dict(v1.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(v1.eval()(x), v15.eval()(x))


def test_shortcut_options():
    a = create_model("resnet50", shortcut="A")
    assert not any("downsample" in k for k in a.state_dict())
    assert isinstance(a.layer1[0].downsample, ZeroPadShortcut) and a.layer1[1].downsample is None
    b = create_model("resnet50")
    assert sum(isinstance(m.downsample, nn.Sequential) for m in b.modules() if isinstance(m, Bottleneck)) == 4
    c = create_model("resnet50", shortcut="C")
    assert sum(isinstance(m.downsample, nn.Sequential) for m in c.modules() if isinstance(m, Bottleneck)) == 16
    # option A: the shortcut of a stride-2 block subsamples and zero-pads
    sc = ZeroPadShortcut(2, 4, 2)
    x = torch.arange(2 * 4 * 4, dtype=torch.float).reshape(1, 2, 4, 4)
    y = sc(x)
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2]) and not y[:, 2:].any()


def test_plain_net_has_no_shortcut():
    m = create_model("resnet50", plain=True).eval()
    assert all(b.downsample is None and not b.residual for b in m.modules() if isinstance(b, Bottleneck))
    assert n_params(m) < PARAMS["resnet50"]  # the four projections are gone


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20_cifar", "plain20_cifar"])
def test_every_parameter_gets_a_gradient(name):
    m = create_model(name, num_classes=5)
    m(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_options_in_chans_zero_init_and_small_stem():
    m = create_model("resnet50", in_chans=1, num_classes=10, zero_init_residual=True)
    assert m.conv1.weight.shape == (64, 1, 7, 7)
    assert all(b.bn3.weight.abs().sum() == 0 for b in m.modules() if isinstance(b, Bottleneck))
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    s = create_model("resnet18", stem="small").eval()
    with torch.no_grad():
        assert s.forward_pyramid(torch.randn(1, 3, 32, 32))["C2"].shape[-1] == 32  # no stride-4 stem
    cifar = create_model("resnet20_cifar").eval()
    assert [f.shape[1:] for f in cifar.forward_pyramid(torch.randn(1, 3, 32, 32)).values()] == [
        (16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_reset_classifier():
    m = create_model("resnet50")
    m.reset_classifier(3)
    assert m.fc.weight.shape == (3, 2048) and m.cfg.num_classes == 3
    m.reset_classifier(0)
    assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2048)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="did you mean 'resnet50'"):
        create_model("resnet51")
    with pytest.raises(UserError, match="unknown variant"):
        create_model("resnet50", variant="v2")
    with pytest.raises(UserError, match="shortcut"):
        create_model("resnet50", shortcut="D")
    with pytest.raises(UserError, match="unknown model option"):
        create_model("resnet50", depth=50)
    m = create_model("resnet18")
    with pytest.raises(UserError, match="below the 32 px minimum"):
        m(torch.randn(1, 3, 16, 16))
    with pytest.raises(UserError, match="in_chans=1"):
        m(torch.randn(1, 1, 32, 32))


def test_blurpool_blurs_before_each_strided_conv_and_keeps_the_state_dict():
    from resnet50.model import BlurConv2d

    plain, blur = create_model("resnet50"), create_model("resnet50", blurpool=True)
    wrapped = [n for n, m in blur.named_modules() if isinstance(m, BlurConv2d)]
    assert wrapped == [f"layer{i}.0.{c}" for i in (2, 3, 4) for c in ("conv2", "downsample.0")]  # v1.5, not the stem
    assert blur.state_dict().keys() == plain.state_dict().keys()
    blur.load_state_dict(plain.state_dict(), strict=True)
    conv = blur.layer2[0].conv2
    x = torch.randn(1, 128, 8, 8)
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = torch.nn.functional.conv2d(x, k.expand(128, 1, 3, 3), padding=1, groups=128)
    assert torch.allclose(blurred[..., 3, 3], (x[..., 2:5, 2:5] * k).sum((-1, -2)), atol=1e-6)
    assert torch.allclose(conv(x), torch.nn.functional.conv2d(blurred, conv.weight, stride=2, padding=1), atol=1e-5)
    assert blur(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    assert n_params(blur) == 25_557_032
