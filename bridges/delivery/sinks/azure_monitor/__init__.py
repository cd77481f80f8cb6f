"""Azure Monitor custom metrics, with the app's managed identity (Monitoring Metrics Publisher). Its declaration."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridges.delivery.sinks.declaration import SinkDeclaration
from bridges.setting_rows import Setting, http_url, name_list, plain_text, region, resource_id


def _endpoint_names_the_region(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The endpoint override names the regional host itself."""
    return ("AZURE_MONITOR_REGION",) if values.get("azure_monitor_endpoint") else ()


def _build(settings):
    from bridges.delivery.sinks.azure_monitor.sink import AzureMonitorSink

    return AzureMonitorSink.from_settings(settings)


SINK = SinkDeclaration(
    name="azure_monitor",
    settings=(
        Setting("AZURE_MONITOR_RESOURCE_ID", "", resource_id,
                "Default Azure resource the custom metrics belong to (a metric's `azure.resource_id` overrides it). "
                "Grant the app's identity Monitoring Metrics Publisher on it.", "azure_monitor"),
        Setting("AZURE_MONITOR_REGION", "", region,
                "That resource's region (`westeurope`): metrics go to `https://<region>.monitoring.azure.com`.",
                "azure_monitor"),
        Setting("AZURE_MONITOR_ENDPOINT", "", http_url,
                "Endpoint override for sovereign clouds (`https://usgovarizona.monitoring.azure.us`); replaces the "
                "regional URL.", "azure_monitor"),
        Setting("AZURE_MONITOR_NAMESPACE", "Bridge", plain_text, "Namespace for metrics that name none.", "azure_monitor"),
        Setting("AZURE_MONITOR_DIMENSION_PRIORITY", "", name_list,
                "Tag names to keep first when a metric has more than 10 (comma list); the rest in key order.",
                "azure_monitor"),
    ),
    required=("AZURE_MONITOR_RESOURCE_ID", "AZURE_MONITOR_REGION"),
    build=_build,
    needless=_endpoint_names_the_region,
)
