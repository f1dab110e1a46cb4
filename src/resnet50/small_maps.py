"""Convolutions on small feature maps as plain matrix products: the same function, a faster backward on CPU.

At the demo's 48 px input, ResNet-50's layer3 works on 3 x 3 maps and layer4 on 2 x 2. There oneDNN's convolution
backward runs at a small fraction of its forward's rate (a 1 x 1 convolution of layer4 takes 4-6x its forward,
against about 2x for a matrix product and its two gradients; profiled on the Zen 4 CPU of docs/benchmarks.md). Two
identities give the same convolution as matrix products, whose backward is two more matrix products:

- a 1 x 1 convolution with stride s on channels-last data is ``x[:, :, ::s, ::s]`` (N, H, W, C) times the
  (C, C_out) weight matrix;
- a k x k convolution on an H x W map is one product of the flattened map (N, H * W * C) with a block matrix of
  (H_out * W_out * C_out) x (H * W * C) whose block (o, i) is the kernel tap that joins output position o to input
  position i (zero where none does): the convolution's doubly block-Toeplitz matrix. On a 2 x 2 map with padding 1
  every output sees every input through 4 of the 9 taps, so the product does 4/9 of the multiply-adds a direct
  convolution over the zero padding does; on 3 x 3 maps the two do the same work.

:func:`use_small_map_convs` switches a model's eligible ``nn.Conv2d`` layers to :class:`SmallMapConv2d` (same
parameters, same state dict, the same outputs to rounding); each call picks the path from the input's shape, so
large maps keep torch's convolution. The engine does this for CPU training (``run.conv_impl``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

# Where each path is taken, from the input map's positions (H * W), as measured convolution by convolution in
# benchmarks/small_maps.py (forward + backward, bf16, docs/benchmarks.md): a k x k convolution (k > 1) whose output
# map has at most 4 positions (layer4's 3x3s at 33-48 px input, and the strided one into it: 1.4-2.5x; on a 3 x 3
# output it was 0.76-1.13x in three runs), a 1 x 1 of stride 1 on maps of up to 3 x 3 (1.3-2.1x; on 6 x 6 and
# 12 x 12 maps it is no faster), a strided 1 x 1 (the projection shortcuts) on maps of up to 12 x 12 (1.1-2.9x).
MAX_TOEPLITZ_OUTPUTS = 4
MAX_POINTWISE_POSITIONS = 9
MAX_STRIDED_POINTWISE_POSITIONS = 144


@functools.lru_cache(maxsize=64)
def toeplitz_taps(h: int, w: int, k: int, stride: int, padding: int) -> tuple[Tensor, int, int]:
    """(index, H_out, W_out): ``index[o, i]`` is the tap ``ky * k + kx`` that joins output position ``o`` to input
    position ``i`` (row-major positions), ``k * k`` where none does; shape (H_out * W_out, H * W), int64."""
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    index = torch.full((ho * wo, h * w), k * k, dtype=torch.long)
    for oy in range(ho):
        for ox in range(wo):
            for ky in range(k):
                for kx in range(k):
                    iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
                    if 0 <= iy < h and 0 <= ix < w:
                        index[oy * wo + ox, iy * w + ix] = ky * k + kx
    return index, ho, wo


def toeplitz_matrix(weight: Tensor, h: int, w: int, stride: int, padding: int) -> tuple[Tensor, int, int]:
    """The (H_out * W_out * C_out, H * W * C_in) matrix of a square ``weight`` (C_out, C_in, k, k) on an h x w map,
    with H_out and W_out; rows and columns ordered (position, channel), as channels-last memory is."""
    c_out, c_in, k, _ = weight.shape
    index, ho, wo = toeplitz_taps(h, w, k, stride, padding)
    taps = weight.permute(2, 3, 0, 1).reshape(k * k, c_out, c_in)
    taps = torch.cat([taps, taps.new_zeros(1, c_out, c_in)])
    blocks = taps.index_select(0, index.flatten().to(weight.device)).view(ho * wo, h * w, c_out, c_in)
    return blocks.permute(0, 2, 1, 3).reshape(ho * wo * c_out, h * w * c_in), ho, wo


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (square kernel, stride and padding, no groups or dilation) that computes small maps as matrix
    products (the module docstring); input and output (N, C, H, W) as for ``nn.Conv2d``, channels-last out."""

    def route(self, h: int, w: int) -> str:
        """The path an h x w input takes: "pointwise" (1 x 1 as one product), "toeplitz" (the block matrix) or
        "torch" (``nn.Conv2d``'s own)."""
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        if k == 1 and p == 0 and h * w <= (MAX_POINTWISE_POSITIONS if s == 1 else MAX_STRIDED_POINTWISE_POSITIONS):
            return "pointwise"
        if k > 1 and ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1) <= MAX_TOEPLITZ_OUTPUTS:
            return "toeplitz"
        return "torch"

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        route = self.route(h, w)
        if route == "torch":
            return super().forward(x)
        s = self.stride[0]
        if route == "pointwise":
            if s > 1:
                x = x[:, :, ::s, ::s]
            # one explicit 2-D product: a 4-D @ 2-D matmul is not folded into one under no-grad bf16 autocast, and
            # torch then copies the weight once per (image, row) for a bmm (10x slower evaluation, measured on Zen 4)
            ho, wo = x.shape[2], x.shape[3]
            y = (x.permute(0, 2, 3, 1).reshape(n * ho * wo, c) @ self.weight.view(self.out_channels, c).t()) \
                .view(n, ho, wo, self.out_channels)
        else:
            weight = self.weight
            if torch.is_autocast_enabled(x.device.type):  # build the big matrix in the product's dtype
                weight = weight.to(torch.get_autocast_dtype(x.device.type))
            matrix, ho, wo = toeplitz_matrix(weight, h, w, s, self.padding[0])
            y = (x.permute(0, 2, 3, 1).reshape(n, h * w * c) @ matrix.t()).view(n, ho, wo, self.out_channels)
        if self.bias is not None:
            y = y + self.bias
        return y.permute(0, 3, 1, 2)


def eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and len(set(conv.kernel_size)) == len(set(conv.stride)) == len(set(conv.padding)) == 1)


def use_small_map_convs(model: nn.Module) -> int:
    """Switch every eligible ``nn.Conv2d`` of ``model`` to :class:`SmallMapConv2d` in place (parameters and state
    dict unchanged); returns how many were switched."""
    n = 0
    for m in model.modules():
        if eligible(m):
            m.__class__ = SmallMapConv2d
            n += 1
    return n
