"""Cost of reading each vendor format in, and of the webhook mapping engine, per point.

Each format's bodies are what the bridge's own sink for that vendor writes for the foundation
benchmark's 10,000-point payload (so the figures cover realistic bodies of every type the
format carries). Timed: the format's decode plus validation and normalization, i.e. everything
``Bridge.receive`` does before delivery, per decoded item. The mapping engine is timed per
event (an Alertmanager notification of 100 alerts and a GitHub workflow run) through
``SourceRules.apply`` plus normalization. The floor is the foundation's (json.loads +
msgpack.packb of the canonical payload), measured in the same run; target <= 4x.

OTLP (protobuf and JSON) and Influx lines carry 10,000 gauges and counters; the Prometheus text
exposition 10,000 gauges, counters, histograms and summaries, read as a ``format: prometheus``
polled source reads a scrape's body (``polling.scraped`` plus normalization, no HTTP). Beside them,
the same bodies read by the reference parsers alone (opentelemetry-proto's
``ParseFromString``, protobuf's ``json_format.Parse``, prometheus_client's
``text_string_to_metric_families`` with every sample listed): the bridge's whole path should
stay within 2x of that bare parse.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_ingest import ROUNDS, payload, seconds  # noqa: E402
from benchmarks.bench_sinks import SINKS  # noqa: E402
from benchmarks.common import best_and_median, report  # noqa: E402
from bridges.delivery.sinks import build_sinks  # noqa: E402
from bridges.formats import azure_monitor, dynatrace, influx, otlp, remote_write, unleash  # noqa: E402
from bridges.formats.canonical import may_hold_surrogates  # noqa: E402
from bridges.ingest.normalize import Normalizer  # noqa: E402
from bridges.scheduled import polling  # noqa: E402
from bridges.settings import load_settings  # noqa: E402
from bridges.webhooks.rule_files import BUILTIN_DIR, load_sources  # noqa: E402

WEBHOOKS = ROOT / "tests" / "testdata" / "webhooks"
SCALARS = 10_000  # gauges and counters for OTLP and Influx: those of a 25,000-point foundation payload
EXPOSED = 10_000  # points of the Prometheus exposition: a 12,500-point foundation payload without aggregates
SLOW_ROUNDS = 5  # for bodies that take most of a second to read (OTLP JSON, the exposition)


class Scrape:
    """A ``format: prometheus`` polled source's body read as the polling function reads it."""

    source = polling.Source("bench", "http://127.0.0.1/metrics", rules=None, format="prometheus")

    def decode(self, body: bytes, content_type: str, params: dict, max_bytes: int):
        decoded = polling.scraped(self.source, body, content_type, time.time_ns())
        # The polling function normalizes with the lone-surrogate check on (Normalizer's default).
        return dataclasses.replace(decoded, may_hold_surrogates=True)


FORMATS = [  # (label, sink label in bench_sinks, format, content type, route parameters)
    ("dynatrace lines", "dynatrace", dynatrace, "text/plain; charset=utf-8", {}),
    ("azure custom metrics", "azure_monitor", azure_monitor, "application/x-ndjson",
     {"resourceId": "subscriptions/0/resourceGroups/rg/providers/Microsoft.Web/sites/bench/metrics"}),
    ("prometheus remote-write", "prometheus", remote_write, "application/x-protobuf", {}),
    ("unleash custom", "unleash custom", unleash.CUSTOM, "application/json", {}),
    ("unleash impact", "unleash impact", unleash.CLIENT, "application/json", {}),
    ("influx line protocol", "influx", influx.V2, "text/plain; charset=utf-8", {}),
    ("otlp protobuf", "otlp protobuf", otlp.Otlp(), "application/x-protobuf", {}),
    ("otlp json", "otlp json", otlp.Otlp(), "application/json", {}),
    ("prometheus exposition", "exposition", Scrape(), "text/plain; version=0.0.4; charset=utf-8", {}),
]
MAX_BYTES = 20 * 1024 * 1024


def influx_lines(metrics: list, now_ns: int) -> list[bytes]:
    """The gauges and counters as line protocol, one field per line, bodies of 5,000 lines (as
    Telegraf batches): what no sink sends, so written here."""
    def escape(text: str, chars: str) -> str:
        for char in "\\" + chars:
            text = text.replace(char, "\\" + char)
        return text

    lines = [
        escape(m.name, ", ") + "".join(f",{escape(k, ',= ')}={escape(v, ',= ')}" for k, v in m.tags if k and v)
        + f" value={float(m.point.value)!r} {now_ns}"
        for m in metrics if m.kind in ("gauge", "counter")
    ]
    return ["\n".join(lines[i:i + 5000]).encode() for i in range(0, len(lines), 5000)]


def otlp_request(metrics: list, now_ns: int, as_json: bool) -> list[bytes]:
    """The gauges and counters as one OTLP ExportMetricsServiceRequest (protobuf or JSON)."""
    from google.protobuf.json_format import MessageToJson
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    for m in metrics:
        if m.kind not in ("gauge", "counter"):
            continue
        entry = scope.metrics.add(name=m.name)
        if m.kind == "gauge":
            point = entry.gauge.data_points.add()
        else:
            entry.sum.is_monotonic = True
            entry.sum.aggregation_temporality = 2  # cumulative
            point = entry.sum.data_points.add()
        point.as_double = float(m.point.value)
        point.time_unix_nano = now_ns
        for key, value in m.tags:
            point.attributes.add(key=key).value.string_value = value
    return [MessageToJson(request, indent=None).encode() if as_json else request.SerializeToString()]


def exposition(metrics: list) -> list[bytes]:
    """The gauges, counters, histograms and summaries as one Prometheus text exposition (0.0.4)
    written by prometheus_client: a family per name with its HELP, a series per point (told apart
    by a ``series`` label), histogram buckets cumulative with ``+Inf``, no sample timestamps."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric as Family
    from prometheus_client.registry import CollectorRegistry
    from prometheus_client.utils import floatToGoString

    families: dict[str, Family] = {}
    for index, m in enumerate(metrics):
        family = families.setdefault(m.name, Family(m.name, f"Benchmark metric {m.name}.", m.kind))
        labels = {**dict(m.tags), "series": str(index)}
        if m.kind in ("gauge", "counter"):
            family.add_sample(m.name + ("_total" if m.kind == "counter" else ""), labels, float(m.point.value))
            continue
        if m.kind == "histogram":
            cumulative = 0
            for bucket in m.point.buckets:
                cumulative += bucket.count
                family.add_sample(f"{m.name}_bucket", {**labels, "le": floatToGoString(bucket.upper_limit)}, cumulative)
            family.add_sample(f"{m.name}_bucket", {**labels, "le": "+Inf"}, m.point.count)
        else:
            for quantile in m.point.quantiles:
                family.add_sample(m.name, {**labels, "quantile": floatToGoString(quantile.quantile)}, quantile.value)
        family.add_sample(f"{m.name}_count", labels, m.point.count)
        family.add_sample(f"{m.name}_sum", labels, m.point.sum)

    class Exposed:
        def collect(self):
            return families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exposed())
    return [generate_latest(registry)]


def bare_otlp(body: bytes, as_json: bool) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest()
    if as_json:
        json_format.Parse(body, request)
    else:
        request.ParseFromString(body)


def bare_exposition(body: bytes) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(len(family.samples) for family in text_string_to_metric_families(body.decode()))


BARE = {  # label in FORMATS: (the reference parser, one body read by it alone)
    "otlp protobuf": ("opentelemetry-proto ParseFromString", lambda body: bare_otlp(body, as_json=False)),
    "otlp json": ("protobuf json_format.Parse", lambda body: bare_otlp(body, as_json=True)),
    "prometheus exposition": ("prometheus_client text_string_to_metric_families", bare_exposition),
}


def bodies_for(sink_label: str, metrics: list, now_ns: int) -> list[bytes]:
    """The request bodies the sink would send, with their Content-Encoding undone the way the
    pipeline undoes it (gzip) or left for the decoder (snappy); for the formats no sink sends,
    bodies written here."""
    import gzip

    if sink_label == "influx":
        return influx_lines(metrics, now_ns)
    if sink_label.startswith("otlp"):
        return otlp_request(metrics, now_ns, as_json=sink_label.endswith("json"))
    if sink_label == "exposition":
        return exposition(metrics)

    [(_, name, settings)] = [entry for entry in SINKS if entry[0] == sink_label]
    [sink] = build_sinks(load_settings({**settings, "BRIDGE_SINKS": name}))
    bodies = []
    for request in sink.encode(metrics, now_ns).requests:
        encoding = {k.lower(): v for k, v in request.headers.items()}.get("content-encoding", "")
        bodies.append(gzip.decompress(request.body) if encoding == "gzip" else request.body)
    return bodies


def read_all(fmt, bodies: list[bytes], content_type: str, params: dict, normalizer: Normalizer, now_ns: int) -> int:
    items = 0
    for body in bodies:
        decoded = fmt.decode(body, content_type, params, MAX_BYTES)
        result = normalizer.normalize(decoded.items, now_ns, lambda i: "", check_unicode=decoded.may_hold_surrogates)
        items += len(result.metrics)
    return items


def wire_points(fmt, bodies: list[bytes], content_type: str, params: dict) -> int:
    """Points as the format itself counts them: remote-write samples, Dynatrace lines, Unleash
    samples; the decoded items where one item is one point on the wire."""
    if fmt is remote_write:
        from bridges.formats.remote_write import decode_write_request

        return sum(len(series["samples"]) for body in bodies for series in decode_write_request(body)["timeseries"])
    if isinstance(fmt, Scrape):  # samples
        return sum(map(bare_exposition, bodies))
    return sum(len(fmt.decode(body, content_type, params, MAX_BYTES).items) for body in bodies)


def time_format(fmt, bodies, content_type, params, normalizer, now_ns, rounds: int = ROUNDS) -> tuple[float, float]:
    return best_and_median([seconds(lambda: read_all(fmt, bodies, content_type, params, normalizer, now_ns))
                            for _ in range(rounds)])


def time_mapping(rules, body, headers, repeat: int, normalizer, now_ns: int) -> tuple[float, float]:
    """Best and median seconds for ``repeat`` payloads through the rules and the Normalizer."""
    check_unicode = may_hold_surrogates(json.dumps(body).encode())  # as the webhook route decides

    def run():
        for _ in range(repeat):
            decoded = rules.apply(body, headers, now_ns)
            normalizer.normalize(decoded.items, now_ns, lambda i: "", check_unicode=check_unicode)

    run()
    return best_and_median([seconds(run) for _ in range(ROUNDS)])


def webhook_case(source: str, sample: str, sources: dict | None = None) -> tuple:
    rules = (sources or load_sources([BUILTIN_DIR]))[source]
    body = json.loads((WEBHOOKS / source / f"{sample}.json").read_text())
    headers_file = WEBHOOKS / source / f"{sample}.headers.json"
    headers = {k.lower(): v for k, v in json.loads(headers_file.read_text()).items()} if headers_file.exists() else {}
    return rules, body, headers


def main() -> None:
    canonical = payload()
    now_ns = time.time_ns()
    normalizer = Normalizer()
    metrics = [dataclasses.replace(m, time_ns=now_ns) for m in normalizer.normalize(json.loads(canonical), now_ns).metrics]
    wider = normalizer.normalize(json.loads(payload(25_000)), now_ns).metrics
    inputs = {"influx": [m for m in wider if m.kind in ("gauge", "counter")],
              "exposition": [m for m in wider[:12_500] if m.kind != "aggregate"]}
    inputs["otlp protobuf"] = inputs["otlp json"] = inputs["influx"]
    assert len(inputs["influx"]) == SCALARS and len(inputs["exposition"]) == EXPOSED
    floor = []

    def measure_floor():
        floor.extend(seconds(lambda: msgpack.packb(json.loads(canonical))) for _ in range(ROUNDS))

    measure_floor()
    timed = [(label, fmt, content_type, params, bodies_for(sink_label, inputs.get(sink_label, metrics), now_ns))
             for label, sink_label, fmt, content_type, params in FORMATS]
    measure_floor()  # again after warming up, so one slow moment does not set the floor
    floor_best, floor_median = best_and_median(floor)
    floor_us = floor_best / len(metrics) * 1e6
    lines = [(f"floor (json.loads + msgpack.packb, foundation payload): {floor_us:.2f} us/point "
              f"(median {floor_median / len(metrics) * 1e6:.2f})")]
    for label, fmt, content_type, params, bodies in timed:
        started = time.perf_counter()
        items = read_all(fmt, bodies, content_type, params, normalizer, now_ns)
        rounds = ROUNDS if time.perf_counter() - started < 0.25 else SLOW_ROUNDS
        best, median = time_format(fmt, bodies, content_type, params, normalizer, now_ns, rounds)
        per_item = best / items * 1e6
        wire = wire_points(fmt, bodies, content_type, params)
        lines.append(f"{label:<24} {per_item:6.2f} us/point (median {median / items * 1e6:.2f}), {items} points "
                     f"from {len(bodies)} bodies, {sum(map(len, bodies))} bytes: {per_item / floor_us:.2f}x floor; "
                     f"per point as the format counts them ({wire}): {best / wire * 1e6:.2f} us, "
                     f"{best / wire * 1e6 / floor_us:.2f}x")
        if label in BARE:  # the same bodies through the reference parser alone
            parser, parse = BARE[label]
            bare_best, bare_median = best_and_median([seconds(lambda: [parse(b) for b in bodies])  # noqa: B023
                                                      for _ in range(rounds)])
            lines.append(f"{'  bare parse':<24} {bare_best / items * 1e6:6.2f} us/point (median "
                         f"{bare_median / items * 1e6:.2f}), {parser} alone: {bare_best / items * 1e6 / floor_us:.2f}x "
                         f"floor; bridge's whole path / bare parse: {best / bare_best:.2f}x (goal <= 2x)")
    for source, sample, events in (("alertmanager", "firing_and_resolved", "body.alerts"),
                                   ("github", "workflow_run_failure", None)):
        rules, body, headers = webhook_case(source, sample)
        if events:  # a notification of 100 alerts: 100 events in one payload
            body = {**body, "alerts": (body["alerts"] * 100)[:100]}
        count = len(body["alerts"]) if events else 1
        repeat = max(1, 1000 // count)
        best, median = time_mapping(rules, body, headers, repeat, normalizer, now_ns)
        per_event = best / (repeat * count) * 1e6
        decoded = rules.apply(body, headers, now_ns)
        raw = json.dumps(body).encode()
        payload_floor = min(seconds(lambda: msgpack.packb(json.loads(raw))) for _ in range(ROUNDS)) / count * 1e6  # noqa: B023
        per_metric = per_event * count / len(decoded.items)
        lines.append(f"mapping {source:<16} {per_event:6.2f} us/event (median {median / (repeat * count) * 1e6:.2f}), "
                     f"{len(decoded.items) / count:.1f} metrics per event: {per_event / floor_us:.2f}x the per-point "
                     f"floor, {per_metric / floor_us:.2f}x per metric; {per_event / payload_floor:.2f}x json.loads + "
                     f"msgpack.packb of its own payload ({payload_floor:.2f} us/event)")
    lines += every_sample_case(normalizer, now_ns, floor_us)
    lines.append("target: each at most 4x the floor (for a sample case: per metric it produces)")
    report("inputs", lines)


def every_sample_case(normalizer: Normalizer, now_ns: int, floor_us: float) -> list[str]:
    """Each built-in source's sample payloads (tests/testdata/webhooks) that yield metrics: time per
    delivery through its rules and the Normalizer, and per metric produced against the floor."""
    sources = load_sources([BUILTIN_DIR])
    lines = ["sample case                                       us/delivery  metrics  us/metric  x floor"]
    for case in sorted(WEBHOOKS.glob("*/*.json")):
        if case.name.endswith((".headers.json", ".expected.json")) or case.parent.name not in sources:
            continue
        rules, body, headers = webhook_case(case.parent.name, case.stem, sources)  # the files read once
        produced = len(rules.apply(body, headers, now_ns).items)
        if not produced:
            continue
        best, _ = time_mapping(rules, body, headers, 200, normalizer, now_ns)
        per_delivery = best / 200 * 1e6
        lines.append(f"{case.parent.name + '/' + case.stem:<50} {per_delivery:10.2f} {produced:8d} "
                     f"{per_delivery / produced:10.2f} {per_delivery / produced / floor_us:8.2f}")
    return lines


if __name__ == "__main__":
    main()
