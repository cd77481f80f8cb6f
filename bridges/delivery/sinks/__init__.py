"""Sinks: where accepted metrics go. One package per backend: its ``__init__`` declares the sink
(name, settings, what makes it complete, how it is built) and its ``sink.py`` implements
``base.Sink``.

``SINKS`` is the one list of sinks: settings, the retry envelopes' sink names, the command line
and the docs' tables derive from it. Adding a sink is one package and one line here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridges.delivery.sinks import azure_monitor, betterstack, dynatrace, outbox, prometheus, unleash
from bridges.delivery.sinks.declaration import SinkDeclaration

if TYPE_CHECKING:
    from bridges.delivery.sinks.base import LocalSink, Sink

SINKS: tuple[SinkDeclaration, ...] = (
    outbox.SINK,
    dynatrace.SINK,
    betterstack.SINK,
    unleash.SINK,
    azure_monitor.SINK,
    prometheus.SINK,
)
SINK_NAMES = tuple(declaration.name for declaration in SINKS)


def build_sinks(settings: Any) -> list[Sink | LocalSink]:
    """The sinks the settings enable, built (each sink's module is imported only now)."""
    by_name = {declaration.name: declaration for declaration in SINKS}
    return [by_name[name].build(settings) for name in settings.enabled_sinks]
