"""Sinks: where accepted metrics go. One module per backend, each behind ``base.Sink``.

``build_sinks`` makes the sinks the settings enable; backend modules are imported only when
enabled, so a cold start pays for what it uses.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bridges.settings import OUTBOX, Settings

if TYPE_CHECKING:
    from bridges.delivery.deliver import LocalSink
    from bridges.delivery.sinks.base import Sink


def build_sinks(settings: Settings) -> list:
    sinks: list[Sink | LocalSink] = []
    for name in settings.enabled_sinks:
        if name == OUTBOX:
            from bridges.delivery.sinks.outbox import OutboxSink

            sinks.append(OutboxSink(settings.outbox_dir))
        elif name == "dynatrace":
            from bridges.delivery.sinks.dynatrace import DynatraceSink

            sinks.append(DynatraceSink.from_settings(settings))
        elif name == "betterstack":
            from bridges.delivery.sinks.betterstack import BetterStackSink

            sinks.append(BetterStackSink.from_settings(settings))
        elif name == "unleash":
            from bridges.delivery.sinks.unleash import UnleashSink

            sinks.append(UnleashSink.from_settings(settings))
        elif name == "azure_monitor":
            from bridges.delivery.sinks.azure_monitor import AzureMonitorSink

            sinks.append(AzureMonitorSink.from_settings(settings))
        elif name == "prometheus":
            from bridges.delivery.sinks.prometheus import PrometheusSink

            sinks.append(PrometheusSink.from_settings(settings))
    return sinks
