"""What this CPU can do, from /proc/cpuinfo (Linux; elsewhere the answers are "unknown" and the callers stay safe)."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, ISA flags) of the first CPU listed; ("", empty) where /proc/cpuinfo cannot be read."""
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def has_vnni() -> bool:
    """INT8 dot-product instructions (u8 x s8 without the 7-bit range reduction)."""
    return bool(cpu_info()[1] & {"avx512_vnni", "avx_vnni", "amx_int8"})


def has_native_bf16() -> bool:
    """bf16 dot-product instructions (AVX512-BF16 or AMX): bf16 convolutions then run faster than fp32. Without
    them oneDNN converts to fp32 around every kernel and bf16 autocast is slower than plain fp32."""
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16"})
