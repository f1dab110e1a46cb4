"""Small-map convolutions as matrix products (resnet50.small_maps): the same function and gradients as torch's
convolution, in float64 to the last bits, and the same state dict."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet50.factory import create_model
from resnet50.small_maps import SmallMapConv2d, toeplitz_taps, use_small_map_convs


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,size,route", [
    (8, 6, 3, 1, 1, 2, "toeplitz"),    # layer4's 3x3 on 2x2
    (8, 6, 3, 2, 1, 2, "toeplitz"),    # strided, 2x2 -> 1x1
    (8, 6, 3, 1, 1, 1, "toeplitz"),    # a 1x1 map: only the centre tap
    (8, 6, 7, 2, 3, 2, "toeplitz"),    # a large kernel on a tiny map
    (8, 6, 3, 2, 1, 3, "toeplitz"),    # v1.5's strided 3x3 into layer4: 3x3 -> 2x2
    (8, 6, 1, 2, 0, 3, "pointwise"),   # the projection shortcut into layer4: 1x1 stride 2, 3x3 -> 2x2
    (8, 6, 1, 1, 0, 3, "pointwise"),   # 1x1 on 3x3
    (8, 6, 1, 2, 0, 12, "pointwise"),  # strided 1x1 on 12x12
    (8, 6, 3, 1, 1, 3, "torch"),       # 3x3 on 3x3: a 3x3 output is above MAX_TOEPLITZ_OUTPUTS
    (8, 6, 1, 1, 0, 12, "torch"),      # 1x1 of stride 1 on a large map
])
def test_same_outputs_and_gradients_as_conv2d(c_in, c_out, k, stride, padding, size, route):
    torch.manual_seed(0)
    ref = nn.Conv2d(c_in, c_out, k, stride, padding, bias=True).double()
    fast = copy.deepcopy(ref)
    assert use_small_map_convs(fast) == 1 and type(fast) is SmallMapConv2d
    assert fast.route(size, size) == route
    x = torch.randn(3, c_in, size, size, dtype=torch.float64).to(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), fast(xb)
    assert ya.shape == yb.shape
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    for a, b in ((ya, yb), (xa.grad, xb.grad), (ref.weight.grad, fast.weight.grad), (ref.bias.grad, fast.bias.grad)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_resnet50_bf16_inference_runs_matrix_products_not_bmm():
    # Evaluation under bf16 autocast once ran the strided projection shortcuts' 4-D @ 2-D matmul unfolded: torch
    # copied the weight per (image, row) into a bmm, and the demo's validation ran at a tenth of its expected rate
    # (48 against 569 img/s at batch 100 on a Zen 4). Every small-map product must be one aten::mm, and the logits
    # those of torch's convolutions to bf16 rounding.
    torch.manual_seed(0)
    ref = create_model("resnet50", variant="v1.5", num_classes=10, in_chans=1).to(memory_format=torch.channels_last)
    ref.eval()
    fast = copy.deepcopy(ref)
    use_small_map_convs(fast)
    x = torch.randn(2, 1, 48, 48).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.profiler.profile() as prof:
            y = fast(x)
        want = ref(x)
    ops = {e.key: e.count for e in prof.key_averages()}
    assert "aten::bmm" not in ops and ops.get("aten::mm", 0) >= 20, ops
    torch.testing.assert_close(y.float(), want.float(), rtol=0.05, atol=0.05)


def test_toeplitz_taps_hand_checked():
    # 3x3 kernel, padding 1, on a 2x2 map: output (0, 0) sees input (0, 0) through the centre tap 4, (0, 1) through
    # tap 5 (right), (1, 0) through 7 (below), (1, 1) through 8; output (1, 1) sees them through taps 0, 1, 3, 4
    index, ho, wo = toeplitz_taps(2, 2, 3, 1, 1)
    assert (ho, wo) == (2, 2)
    assert index.tolist() == [[4, 5, 7, 8], [3, 4, 6, 7], [1, 2, 4, 5], [0, 1, 3, 4]]
    # stride 2 from 3x3 with padding 1: one output per 2x2 corner; tap 9 (k * k) marks "no tap"
    index, ho, wo = toeplitz_taps(3, 3, 3, 2, 1)
    assert (ho, wo) == (2, 2) and index[0].tolist() == [4, 5, 9, 7, 8, 9, 9, 9, 9]


def test_resnet50_gradients_and_state_dict_unchanged():
    torch.manual_seed(0)
    ref = create_model("resnet50", num_classes=10, in_chans=1).double().to(memory_format=torch.channels_last)
    fast = copy.deepcopy(ref)
    n = use_small_map_convs(fast)
    assert n == 53  # every convolution; the stem (7x7 on 48x48) keeps torch's path at run time
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 1, 48, 48, dtype=torch.float64).to(memory_format=torch.channels_last)
    y = torch.tensor([0, 3, 5, 9])
    for m in (ref, fast):
        F.cross_entropy(m(x), y).backward()
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_engine_switches_on_cpu_unless_torch_is_asked(tmp_path):
    from resnet50 import engine
    from resnet50.recipes import resolve
    from resnet50.train import Classification

    def count(conv_impl):
        cfg = resolve("demo", {"out": str(tmp_path), "name": conv_impl, "conv_impl": conv_impl, "max_steps": 1,
                               "batch_size": 8})
        run = engine.setup(Classification, cfg, log=lambda *a: None)
        return sum(isinstance(m, SmallMapConv2d) for m in run.model.modules())
    assert count("auto") == 53
    assert count("torch") == 0
