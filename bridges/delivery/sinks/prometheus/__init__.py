"""Azure Monitor managed Prometheus: remote write to a data collection rule, with the app's managed identity. Its declaration."""
from __future__ import annotations

from bridges.delivery.sinks.declaration import SinkDeclaration
from bridges.setting_rows import Setting, http_url, positive_int


def _build(settings):
    from bridges.delivery.sinks.prometheus.sink import PrometheusSink

    return PrometheusSink.from_settings(settings)


SINK = SinkDeclaration(
    name="prometheus",
    settings=(
        Setting("PROMETHEUS_REMOTE_WRITE_URL", "", http_url,
                "The data collection rule's full ingestion URL, `https://<dce>.<region>-1.metrics.ingest.monitor.azure.com/"
                "dataCollectionRules/<dcr-id>/streams/Microsoft-PrometheusMetrics/api/v1/write?api-version=2023-04-24`. "
                "Grant the identity Monitoring Metrics Publisher on the data collection rule.", "prometheus"),
        Setting("PROMETHEUS_MAX_SAMPLES_PER_REQUEST", "2000", positive_int, "Samples per remote-write request.",
                "prometheus"),
    ),
    required=("PROMETHEUS_REMOTE_WRITE_URL",),
    build=_build,
)
