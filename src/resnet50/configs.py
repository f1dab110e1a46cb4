"""What every frozen model config (ResNetConfig, DetectorConfig, FasterRCNNConfig, LocalizerConfig) does the same
way: read from a dict with unknown keys refused in one line that names the known ones, and written as a JSON-ready
dict (tuples as lists). Each config saves itself in checkpoints and run configs this way."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .errors import UserError


class DictConfig:
    """Mixin for a frozen config dataclass; ``KIND`` names it in the error ("model", "detector", ...)."""

    KIND: ClassVar[str] = "config"

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown {cls.KIND} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
