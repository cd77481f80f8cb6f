"""What the bridge knows about a sink before it is used: its name, its settings, what makes it
complete, and how it is built. Declarations are cheap to import (settings read them at every
start-up); ``build`` imports the sink itself, so a cold start pays only for the sinks enabled."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridges.setting_rows import Setting

if TYPE_CHECKING:
    from bridges.delivery.sinks.base import LocalSink, Sink


def _needs_all(values: Mapping[str, Any]) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class SinkDeclaration:
    name: str
    settings: tuple[Setting, ...]
    # The settings a complete configuration has. Setting any of them means the sink is meant, so
    # one left out is reported; a sink with none (the outbox) is the fallback when none is set.
    required: tuple[str, ...]
    build: Callable[[Any], Sink | LocalSink]  # from the Settings
    # Which required settings these values make needless (Dynatrace's local OneAgent takes no token).
    needless: Callable[[Mapping[str, Any]], tuple[str, ...]] = _needs_all

    def missing(self, values: Mapping[str, Any]) -> list[str]:
        """The required settings not set, for these parsed values (keyed by field name)."""
        needless = self.needless(values)
        return [name for name in self.required if name not in needless and values.get(name.lower()) is None]
