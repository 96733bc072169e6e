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


def load_yaml_without_aliases(text: str) -> Any:
    """``yaml.safe_load`` that refuses anchors and aliases (``yaml.YAMLError`` naming the line).

    An alias bomb (each line repeating the previous one ten times) expands a few hundred bytes into billions of
    objects; nothing this project reads (campaign specs, ``checkpoints.yaml``) needs aliases, so they are refused.
    """
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not allowed here (line "
                                     f"{event.start_mark.line + 1}); write the value out")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
