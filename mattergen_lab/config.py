"""``PlainConfig``: frozen dataclass configs that round-trip through plain dicts (no class paths)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound="PlainConfig")


class PlainConfig:
    """Mixin for frozen dataclasses: ``to_dict`` / ``from_dict`` with unknown keys named in the error."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict expects a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)
