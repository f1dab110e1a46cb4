"""The Table 1 report: stages, kernels, output shapes, layer counts, parameters and MACs, computed from the model.

Counting method: multiply-accumulates (MACs) of every convolution and fully connected layer, shortcut projections
included; batch norm, ReLU, pooling and the residual additions are not counted (together well under 1 % of the
total). One MAC is two FLOPs. The paper's "3.8 x 10^9 FLOPs" for ResNet-50 counts multiply-adds this way (v1).
Shapes and MACs come from one forward pass on the meta device (no memory, no arithmetic).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .model import MIN_INPUT_SIZE, ResNet, arch_name

METHOD = ("MACs of conv and fc layers (shortcut projections included; BN, ReLU, pooling and additions not "
          "counted); FLOPs = 2 x MACs")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features
    return 0


def trace(model: nn.Module, size: int | tuple[int, int], in_chans: int) -> dict[str, tuple[tuple[int, ...], int]]:
    """For every named submodule: (output shape without batch, MACs of the conv/fc layers inside it), for one image."""
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < MIN_INPUT_SIZE:
        raise UserError(f"input size {h}x{w} is below the {MIN_INPUT_SIZE} px minimum; use --size {MIN_INPUT_SIZE} or more")
    shapes: dict[str, tuple[int, ...]] = {}
    own_macs: dict[str, int] = {}
    meta = _meta_copy(model)
    for name, m in meta.named_modules():
        def hook(mod, inp, out, name=name):
            shapes[name] = tuple(out.shape[1:])
            own_macs[name] = _layer_macs(mod, out)
        m.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.empty(1, in_chans, h, w, device="meta"))
    result = {}
    for name in shapes:
        prefix = name + "." if name else ""
        total = sum(v for k, v in own_macs.items() if k == name or k.startswith(prefix))
        result[name] = (shapes[name], total)
    return result


def _meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` on the meta device, so tracing costs neither memory nor time."""
    if isinstance(model, ResNet):
        with torch.device("meta"):
            return ResNet(model.cfg).eval()
    return copy.deepcopy(model).to("meta").eval()


@dataclass
class StageRow:
    name: str           # module name: conv1, maxpool, layer1, ..., avgpool, fc
    paper: str          # the paper's name: conv1, conv2_x, ...
    output: tuple[int, ...]
    blocks: int
    kernels: list[str]  # e.g. ["1x1, 64", "3x3, 64", "1x1, 256"]
    weighted_layers: int
    params: int
    macs: int


def _block_kernels(block: nn.Module) -> list[str]:
    convs = [m for n, m in block.named_children() if isinstance(m, nn.Conv2d)]
    return [f"{c.kernel_size[0]}x{c.kernel_size[1]}, {c.out_channels}" for c in convs]


def summarize(model: ResNet, size: int = 224) -> dict:
    """The Table 1 view of ``model`` for a square ``size`` input, as a JSON-ready dict."""
    cfg = model.cfg
    traced = trace(model, size, cfg.in_chans)
    rows: list[StageRow] = []
    stem_conv = model.conv1
    stride = stem_conv.stride[0]
    rows.append(StageRow("conv1", "conv1", traced["conv1"][0], 1,
                         [f"{stem_conv.kernel_size[0]}x{stem_conv.kernel_size[1]}, {stem_conv.out_channels}, stride {stride}"],
                         1, count_params(model.conv1) + count_params(model.bn1), traced["conv1"][1]))
    if isinstance(model.maxpool, nn.MaxPool2d):
        mp = model.maxpool
        rows.append(StageRow("maxpool", "max pool", traced["maxpool"][0], 1,
                             [f"{mp.kernel_size}x{mp.kernel_size} max pool, stride {mp.stride}"], 0, 0, 0))
    projections = 0
    for i, name in enumerate(model.stage_names):
        stage = getattr(model, name)
        blocks = list(stage)
        main_convs = len(_block_kernels(blocks[0]))
        projections += sum(isinstance(b.downsample, nn.Sequential) for b in blocks)
        rows.append(StageRow(name, f"conv{i + 2}_x", traced[name][0], len(blocks), _block_kernels(blocks[0]),
                             main_convs * len(blocks), count_params(stage), traced[name][1]))
    rows.append(StageRow("avgpool", "avg pool", traced["avgpool"][0], 1, ["global average pool"], 0, 0, 0))
    if isinstance(model.fc, nn.Linear):
        rows.append(StageRow("fc", "fc", traced["fc"][0], 1, [f"fc, {model.fc.out_features}"], 1,
                             count_params(model.fc), traced["fc"][1]))

    total_macs = traced[""][1]
    weighted = [r.weighted_layers for r in rows]
    report = {
        "arch": _arch_label(model),
        "config": cfg.to_dict(),
        "input": [cfg.in_chans, size, size],
        "stages": [dataclasses.asdict(r) for r in rows],
        "layers": {
            "weighted": sum(weighted),
            "breakdown": [w for w in weighted if w],
            "convolutions": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
            "block_convolutions": sum(weighted) - 1 - (1 if isinstance(model.fc, nn.Linear) else 0),
            "projection_shortcuts": projections,
            "max_pools": int(isinstance(model.maxpool, nn.MaxPool2d)),
            "avg_pools": 1,
        },
        "params": count_params(model),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs": total_macs,
        "flops": 2 * total_macs,
        "method": METHOD,
    }
    if cfg.block == "bottleneck":  # the v1 / v1.5 cost difference, each computed from its own model
        other = "v1" if cfg.variant == "v1.5" else "v1.5"
        with torch.device("meta"):
            twin = ResNet(dataclasses.replace(cfg, variant=other))
        report["macs_by_variant"] = {cfg.variant: total_macs, other: trace(twin, size, cfg.in_chans)[""][1]}
    return report


def _arch_label(model: ResNet) -> str:

    return arch_name(model.cfg) or "custom"


def _fmt_count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def format_report(r: dict) -> str:
    cfg = r["config"]
    head = (f"{r['arch']}  variant {cfg['variant']}  shortcut {'none (plain)' if cfg['plain'] else cfg['shortcut']}"
            f"  input {'x'.join(map(str, r['input']))}")
    lines = [head, ""]
    lines.append(f"{'stage':<16}{'output':<18}{'blocks':>6}  {'layers':>6}  {'params':>10}  {'MACs':>10}  kernels")
    for s in r["stages"]:
        out = "x".join(map(str, s["output"]))
        lines.append(f"{s['paper']:<16}{out:<18}{s['blocks']:>6}  {s['weighted_layers']:>6}  "
                     f"{_fmt_count(s['params']):>10}  {_fmt_count(s['macs']):>10}  [{' | '.join(s['kernels'])}]")
    lay = r["layers"]
    lines += [
        "",
        f"weighted layers  {' + '.join(map(str, lay['breakdown']))} = {lay['weighted']}"
        f"  (stem conv + {lay['block_convolutions']} block convs + fc; {lay['max_pools']} max pool,"
        f" {lay['avg_pools']} average pool; {lay['projection_shortcuts']} projection shortcuts not counted)",
        f"parameters       {r['params']:,}",
        f"MACs             {r['macs']:,}  ({r['macs'] / 1e9:.2f} GMAC, {r['flops'] / 1e9:.2f} GFLOP)",
    ]
    if "macs_by_variant" in r:
        parts = [f"{v} {m / 1e9:.2f} GMAC" for v, m in r["macs_by_variant"].items()]
        lines.append(f"by variant       {'  |  '.join(parts)}")
    lines.append(f"method           {r['method']}")
    return "\n".join(lines)
