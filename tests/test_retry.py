"""The pure retry core: envelope format, splitting at the queue's size limit, backoff, the
retry decision and dead-letter records. No I/O, no clock: every time is NOW_NS-based."""
from __future__ import annotations

import base64
import json
import random
import string
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest

from bridges.delivery.sinks.base import Delivered, Drop, Partial, Rejection, Resend, Retry
from bridges.formats.canonical import decode
from bridges.ingest.normalize import Normalizer
from bridges.model import Aggregate, AzureTarget, Bucket, Counter, Gauge, Histogram, Metric, Quantile, Summary
from bridges.retry.decision import AttemptReport, DeadLetter, Decision, Policy, decide, next_delay
from bridges.retry.envelopes import (
    MAX_TEXT,
    QUEUE_MESSAGE_BYTES,
    SCHEMA_PATH,
    Envelope,
    EnvelopeError,
    MetricTooLarge,
    envelopes_for,
    metrics_of,
)

NOW_NS = 1_795_341_600 * 1_000_000_000  # 2026-11-22T10:00:00Z
S = 1_000_000_000
DATA = Path(__file__).parent / "testdata" / "retry"
POLICY = Policy(base=1.0, cap=60.0, max_attempts=5, max_age=3600.0)


def ids(start: int = 1):
    counter = iter(range(start, 10**9))
    return lambda: uuid.UUID(int=next(counter))


def every_kind() -> list[Metric]:
    t = NOW_NS - 30 * S + 123_456_789  # nanoseconds must survive
    return [
        Metric("g", Gauge(1.25), t, (("env", "prod"), ("région", "été ☀")), "ns", "ms", "a gauge"),
        Metric("c.delta", Counter(3, "delta"), t + 1),
        Metric("c.total", Counter(10.5, "cumulative"), t + 2),
        Metric("h", Histogram(10, 2.5, (Bucket(0.1, 4), Bucket(0.5, 5))), t + 3, (("route", "/api"),)),
        Metric("s", Summary(10, 2.5, (Quantile(0.5, 0.2), Quantile(0.99, 0.9))), t + 4),
        Metric("a", Aggregate(1, 9, 20, 4), t + 5, azure=AzureTarget("/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1", "westeurope")),
    ]


def tagged(count: int, seed: int = 7) -> list[Metric]:
    """Metrics with realistic, only partly repetitive tags (so compression is not trivial)."""
    rng = random.Random(seed)
    return [
        Metric(f"app.requests.{i % 40}", Gauge(rng.random() * 1000), NOW_NS - i * 1_000_001,
               tuple(sorted({"host": f"web-{rng.randrange(200)}", "route": f"/items/{rng.randrange(10**6)}",
                             "status": str(rng.choice((200, 404, 500))), "trace": f"{rng.getrandbits(64):016x}"}.items())))
        for i in range(count)
    ]


def envelope_of(metrics, attempt=1, first_failure_ns=NOW_NS, sink="dynatrace") -> Envelope:
    (envelope,) = envelopes_for(sink, metrics, "HTTP 503", NOW_NS, attempt=attempt, first_failure_ns=first_failure_ns,
                                new_id=ids())
    return envelope


# -- schema and format -----------------------------------------------------------------------


def test_the_schema_is_valid_draft_2020_12_and_compiles_in_jsonschema_rs():
    import jsonschema_rs

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema_rs.Draft202012Validator(schema)
    # Every sink the registry has, and the delivery queue's "*", is a sink an envelope can name.
    from bridges.delivery.sinks import SINK_NAMES
    from bridges.retry.envelopes import EVERY_SINK

    named = jsonschema.Draft202012Validator(schema["properties"]["sink"])
    assert all(named.is_valid(sink) for sink in (EVERY_SINK, *SINK_NAMES))
    doc = json.loads(envelope_of(every_kind()).to_text())
    for sink in SINK_NAMES:
        assert Envelope.from_json({**doc, "sink": sink}).sink == sink


@pytest.mark.parametrize("sink, attempt, valid", [
    ("*", 0, True),  # the delivery queue's envelope: every sink, not yet delivered
    ("dynatrace", 1, True),
    ("*", 1, False),
    ("dynatrace", 0, True),  # the delivery queue's too: dynatrace's share when routes are declared
    ("outbox", 0, True),
    ("dynatrace", -1, False),
])
def test_sink_every_goes_with_attempt_0_and_a_named_sink_with_attempt_0_or_more(sink, attempt, valid):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    document = {**json.loads(envelope_of(every_kind()).to_text()), "sink": sink, "attempt": attempt}
    assert validator.is_valid(document) is valid


def test_envelope_text_metrics_round_trip_every_kind_to_the_nanosecond():
    metrics = every_kind()
    envelope = envelope_of(metrics, attempt=3, first_failure_ns=NOW_NS - 5 * S)
    text = envelope.to_text()
    assert text.isascii()
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(json.loads(text))
    back = Envelope.from_text(text)
    assert back == envelope
    assert (back.attempt, back.first_failure_ns, back.not_before_ns, back.count) == (3, NOW_NS - 5 * S, NOW_NS, 6)
    assert metrics_of(back) == metrics
    assert Envelope.from_text(text.encode()) == envelope


def test_the_metrics_field_is_base64_of_gzipped_canonical_ndjson():
    import gzip

    envelope = envelope_of(every_kind())
    ndjson = gzip.decompress(base64.b64decode(envelope.metrics)).decode()
    assert [json.loads(line)["name"] for line in ndjson.splitlines()] == [m.name for m in every_kind()]
    assert json.loads(envelope.to_text())["encoding"] == "canonical-ndjson+gzip+base64"


def test_a_stored_envelope_and_dead_letter_still_decode():
    """Messages outlive deployments: the golden files must keep decoding to the same metrics."""
    expected = Normalizer().normalize(decode((DATA / "metrics.ndjson").read_bytes(), "application/x-ndjson").items, 0).metrics
    envelope = Envelope.from_text((DATA / "envelope.json").read_text())
    assert envelope.id == "6f1c2a52-8f7e-4d3b-9a51-0c2d6e7f8a9b"
    assert (envelope.sink, envelope.attempt, envelope.count) == ("dynatrace", 2, 6)
    assert envelope.not_before_ns == NOW_NS + 5_500_000_000
    assert metrics_of(envelope) == expected
    assert expected[0].time_ns % S == 123_456_789
    record = DeadLetter.from_text((DATA / "dead-letter.json").read_text())
    assert record.envelope == envelope and record.at_ns == NOW_NS
    assert record.reason.startswith("gave up after 8 attempts")


def _doc(**changes) -> str:
    doc = json.loads(envelope_of(every_kind()).to_text())
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{", "retry envelope: not JSON"),
        ("[]", "retry envelope: [] is not of type 'object'"),
        (_doc(sink=None), "retry envelope field 'sink': required"),
        (_doc(sink="graphite"), "retry envelope field 'sink': 'graphite' is not one of"),
        (_doc(attempt=-1), "retry envelope field 'attempt': -1 is less than the minimum of 0"),
        (_doc(attempt="2"), "retry envelope field 'attempt': '2' is not of type 'integer'"),
        (_doc(id="not-a-uuid"), "retry envelope field 'id'"),
        (_doc(not_before="2026-11-22T10:00:00+01:00"), "retry envelope field 'not_before'"),
        (_doc(first_failure="2026-13-22T10:00:00Z"), "retry envelope field 'first_failure': not a calendar date"),
        (_doc(encoding="msgpack"), "retry envelope field 'encoding'"),
        (_doc(metrics="not base64!"), "retry envelope field 'metrics'"),
        (_doc(extra=1), "retry envelope: Additional properties are not allowed ('extra' was unexpected)"),
        (_doc(last_error="x" * 3000), "retry envelope field 'last_error'"),
    ],
)
def test_invalid_envelopes_are_refused_naming_the_field(text, expected):
    with pytest.raises(EnvelopeError) as caught:
        Envelope.from_text(text)
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize(
    "metrics, expected",
    [
        (base64.b64encode(b"plain text").decode(), "retry envelope field 'metrics': not base64 of gzip data"),
        (base64.b64encode(__import__("gzip").compress(b'{"name":"x"}\n')).decode(),
         "retry envelope field 'metrics': metric 0"),
        (base64.b64encode(__import__("gzip").compress(b"{oops\n")).decode(), "retry envelope field 'metrics': malformed JSON"),
    ],
)
def test_undecodable_metrics_are_refused_naming_the_field(metrics, expected):
    envelope = Envelope.from_text(_doc(metrics=metrics, count=1))
    with pytest.raises(EnvelopeError) as caught:
        metrics_of(envelope)
    assert str(caught.value).startswith(expected)


def test_a_count_that_does_not_match_the_metrics_is_refused():
    with pytest.raises(EnvelopeError, match="field 'count': says 7, 'metrics' holds 6"):
        metrics_of(Envelope.from_text(_doc(count=7)))


# -- splitting -------------------------------------------------------------------------------


def test_twenty_thousand_metrics_split_into_full_envelopes_that_fit_a_queue_message():
    metrics = tagged(20_000)
    envelopes = envelopes_for("azure_monitor", metrics, "HTTP 429", NOW_NS, new_id=ids())
    assert len(envelopes) > 3
    texts = [e.to_text() for e in envelopes]
    for text in texts:
        assert len(text.encode()) <= MAX_TEXT
        assert len(base64.b64encode(text.encode())) <= QUEUE_MESSAGE_BYTES
    for text in texts[:-1]:  # greedy: every envelope but the last is close to full
        assert len(text) > MAX_TEXT * 0.95
    decoded = [m for text in texts for m in metrics_of(Envelope.from_text(text))]
    assert decoded == metrics  # every metric once, in order
    assert sum(e.count for e in envelopes) == 20_000
    assert len({e.id for e in envelopes}) == len(envelopes)


def test_a_small_limit_gives_more_envelopes_and_never_cuts_a_metric():
    metrics = tagged(300)
    envelopes = envelopes_for("dynatrace", metrics, "timeout", NOW_NS, max_text=4000)
    assert len(envelopes) > 3
    assert all(len(e.to_text()) <= 4000 for e in envelopes)
    assert [m for e in envelopes for m in metrics_of(e)] == metrics


def test_few_metrics_make_one_envelope_and_none_make_none():
    assert len(envelopes_for("unleash", tagged(100), "503", NOW_NS)) == 1
    assert envelopes_for("unleash", [], "503", NOW_NS) == []


def test_a_metric_too_large_for_any_envelope_raises_naming_it():
    with pytest.raises(MetricTooLarge, match="metric 0 does not fit a retry envelope even alone") as caught:
        envelopes_for("dynatrace", tagged(3), "503", NOW_NS, max_text=450)
    assert caught.value.index == 0


def test_within_canonical_limits_a_metric_with_random_tags_can_exceed_a_queue_message():
    """64 tags of 1,024 random characters are canonical, yet incompressible past 64 KiB: the
    caller must dead-letter such a metric rather than queue it."""
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits
    tags = tuple(sorted((f"k{i:02d}", "".join(rng.choices(alphabet, k=1024))) for i in range(64)))
    huge = Metric("m", Gauge(1), NOW_NS, tags)
    assert Normalizer().normalize([huge.to_json()], NOW_NS).metrics == [huge]
    with pytest.raises(MetricTooLarge) as caught:
        envelopes_for("betterstack", [Metric("ok", Gauge(1), NOW_NS), huge], "503", NOW_NS)
    assert caught.value.index == 1


def test_reasons_are_cut_to_the_schema_limit_and_bad_arguments_refused():
    (envelope,) = envelopes_for("dynatrace", every_kind(), "é" * 5000, NOW_NS)
    assert len(envelope.last_error) == 2048 and Envelope.from_text(envelope.to_text()) == envelope
    with pytest.raises(ValueError, match="unknown sink 'graphite'"):
        envelopes_for("graphite", every_kind(), "503", NOW_NS)
    with pytest.raises(ValueError, match="attempt starts at 1"):
        envelopes_for("dynatrace", every_kind(), "503", NOW_NS, attempt=-1)


# -- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt, ceiling", [(1, 2.0), (2, 4.0), (4, 16.0), (6, 50.0), (10_000, 50.0)])
def test_full_jitter_stays_within_its_exponential_ceiling_and_uses_all_of_it(attempt, ceiling):
    rng = random.Random(42)
    delays = [next_delay(attempt, 2.0, 50.0, rng) for _ in range(5000)]
    assert all(0 <= d <= ceiling for d in delays)
    assert min(delays) < ceiling * 0.01 and max(delays) > ceiling * 0.99  # full jitter: from 0 to the ceiling
    assert 0.45 * ceiling < sum(delays) / len(delays) < 0.55 * ceiling


def test_retry_after_is_a_floor_even_above_the_cap():
    rng = random.Random(3)
    assert all(next_delay(3, 1.0, 60.0, rng, retry_after=2.5) >= 2.5 for _ in range(1000))
    assert next_delay(3, 1.0, 60.0, rng, retry_after=120.0) == 120.0


def test_backoff_is_deterministic_with_a_seeded_rng_and_checks_its_arguments():
    first = [next_delay(a, 1.0, 30.0, random.Random(9)) for a in range(1, 8)]
    assert first == [next_delay(a, 1.0, 30.0, random.Random(9)) for a in range(1, 8)]
    with pytest.raises(ValueError):
        next_delay(0, 1.0, 30.0, random.Random())


# -- the retry decision ----------------------------------------------------------------------


def test_everything_delivered_is_done():
    envelope = envelope_of(every_kind())
    decision = decide(envelope, AttemptReport(delivered=range(6)), NOW_NS, POLICY)
    assert (decision.kind, decision.retry, decision.dead_letters, decision.delivered) == ("done", [], [], 6)


def test_delivered_or_rejected_with_reasons_is_done():
    envelope = envelope_of(every_kind())
    report = AttemptReport.from_outcome(Partial((Rejection(2, "invalid line"),)), 6)
    decision = decide(envelope, report, NOW_NS, POLICY)
    assert decision.kind == "done"
    assert decision.rejected == {2: "invalid line"} and decision.delivered == 5


def test_pending_metrics_retry_in_a_new_envelope_with_the_next_attempt_and_a_backoff():
    metrics = every_kind()
    envelope = envelope_of(metrics, attempt=2, first_failure_ns=NOW_NS - 10 * S)
    report = AttemptReport(delivered=[0, 3], pending={1: "HTTP 503", 2: "HTTP 503", 4: "timeout", 5: "HTTP 503"})
    decision = decide(envelope, report, NOW_NS, POLICY, rng=random.Random(5), new_id=ids(100))
    expected_delay = next_delay(3, POLICY.base, POLICY.cap, random.Random(5))
    assert decision.kind == "retry" and decision.delivered == 2 and not decision.dead_letters
    (retry,) = decision.retry
    assert retry.attempt == 3 and retry.first_failure_ns == NOW_NS - 10 * S
    assert retry.not_before_ns == NOW_NS + round(expected_delay * S)
    assert retry.last_error == "HTTP 503; timeout"
    assert retry.id == str(uuid.UUID(int=100))
    assert metrics_of(retry) == [metrics[i] for i in (1, 2, 4, 5)]


def test_retry_after_sets_the_earliest_next_attempt():
    envelope = envelope_of(every_kind())
    decision = decide(envelope, AttemptReport.from_outcome(Retry("HTTP 429", after=30.0), 6), NOW_NS, POLICY,
                      rng=random.Random(1))
    (retry,) = decision.retry
    assert retry.not_before_ns >= NOW_NS + 30 * S and retry.count == 6


def test_metrics_without_a_reported_outcome_are_retried_and_bad_indexes_refused():
    envelope = envelope_of(every_kind())
    decision = decide(envelope, AttemptReport(delivered=[0, 1, 2]), NOW_NS, POLICY)
    (retry,) = decision.retry
    assert retry.count == 3 and retry.last_error == "no outcome was reported for this metric"
    with pytest.raises(ValueError, match="delivered index 6 is outside the envelope's 6 metrics"):
        decide(envelope, AttemptReport(delivered=range(7)), NOW_NS, POLICY)


def test_an_index_reported_twice_counts_once_rejected_before_pending_before_delivered():
    envelope = envelope_of(every_kind())
    report = AttemptReport(delivered=range(6), rejected={0: "bad"}, pending={0: "503", 1: "503"})
    decision = decide(envelope, report, NOW_NS, POLICY)
    assert decision.rejected == {0: "bad"} and decision.delivered == 4 and decision.retry[0].count == 1


def test_points_fallen_out_of_the_sinks_window_are_dead_lettered_while_fresh_ones_retry():
    ages = [0, 500, 600, 899, 1000]  # seconds; Better Stack takes points up to 15 min old
    metrics = [Metric(f"m{i}", Gauge(i), NOW_NS - age * S) for i, age in enumerate(ages)]
    envelope = envelope_of(metrics, sink="betterstack")
    policy = Policy(base=0.0, cap=0.0, max_attempts=5, max_age=3600, max_point_age=900)
    report = AttemptReport.from_outcome(Retry("HTTP 503", after=350.0), 5)  # next attempt 350 s from now
    decision = decide(envelope, report, NOW_NS, policy, rng=random.Random(0))
    assert decision.kind == "retry"
    (retry,) = decision.retry
    assert [m.name for m in metrics_of(retry)] == ["m0", "m1"]
    (dead,) = decision.dead_letters
    assert [m.name for m in metrics_of(dead.envelope)] == ["m2", "m3", "m4"]
    assert dead.reason.startswith("fallen out of betterstack's accepted time window (points at most 900 s old)")
    assert dead.reason.endswith("HTTP 503") and dead.at_ns == NOW_NS


def test_when_every_point_is_too_old_the_whole_envelope_is_dead_lettered():
    metrics = [Metric("old", Gauge(1), NOW_NS - 2 * 3600 * S)]
    envelope = envelope_of(metrics, sink="dynatrace")
    policy = Policy(base=1, cap=10, max_attempts=5, max_age=86400, max_point_age=3600)
    decision = decide(envelope, AttemptReport(pending={0: "503"}), NOW_NS, policy, rng=random.Random(0))
    assert decision.kind == "dead_letter" and not decision.retry
    assert metrics_of(decision.dead_letters[0].envelope) == metrics


def test_sinks_without_a_window_retry_old_points():
    metrics = [Metric("old", Gauge(1), NOW_NS - 30 * 86400 * S)]
    decision = decide(envelope_of(metrics, sink="prometheus"), AttemptReport(pending={0: "503"}), NOW_NS, POLICY)
    assert decision.kind == "retry"


def test_past_max_attempts_pending_metrics_are_dead_lettered():
    envelope = envelope_of(every_kind(), attempt=POLICY.max_attempts)
    decision = decide(envelope, AttemptReport(delivered=[0], pending={i: "HTTP 502" for i in range(1, 6)}), NOW_NS, POLICY)
    assert decision.kind == "dead_letter" and decision.delivered == 1
    (dead,) = decision.dead_letters
    assert dead.reason == "gave up after 5 attempts: HTTP 502"
    assert dead.envelope.attempt == 5 and dead.envelope.count == 5
    assert metrics_of(dead.envelope) == every_kind()[1:]


def test_past_max_age_pending_metrics_are_dead_lettered():
    envelope = envelope_of(every_kind(), attempt=2, first_failure_ns=NOW_NS - 3599 * S)
    report = AttemptReport.from_outcome(Retry("HTTP 503", after=5.0), 6)
    decision = decide(envelope, report, NOW_NS, POLICY, rng=random.Random(0))
    (dead,) = decision.dead_letters
    assert decision.kind == "dead_letter" and dead.reason == "older than the maximum age of 3600 s: HTTP 503"
    assert dead.envelope.first_failure_ns == NOW_NS - 3599 * S and dead.envelope.count == 6


def test_a_drop_on_retry_is_dead_lettered_with_its_reason():
    envelope = envelope_of(every_kind())
    decision = decide(envelope, AttemptReport.from_outcome(Drop("HTTP 401: bad token", misconfigured=True), 6), NOW_NS, POLICY)
    assert decision.kind == "dead_letter"
    (dead,) = decision.dead_letters
    assert dead.reason == "dropped on retry: HTTP 401: bad token" and metrics_of(dead.envelope) == every_kind()


def test_drops_dead_letter_while_the_rest_retries():
    envelope = envelope_of(every_kind())
    decision = decide(envelope, AttemptReport(dropped={0: "HTTP 403"}, pending={i: "503" for i in range(1, 6)}), NOW_NS, POLICY)
    assert decision.kind == "retry" and decision.retry[0].count == 5 and decision.dead_letters[0].envelope.count == 1


def test_a_resend_is_not_a_retry_outcome():
    with pytest.raises(ValueError, match="Resend is resolved by the delivery stage"):
        AttemptReport.from_outcome(Resend("413"), 3)
    assert AttemptReport.from_outcome(Delivered(), 2).delivered == range(2)


def test_nothing_retries_forever():
    envelope = envelope_of(every_kind())
    now = NOW_NS
    rng = random.Random(11)
    attempts = 0
    while True:
        attempts += 1
        decision = decide(envelope, AttemptReport.from_outcome(Retry("HTTP 503", after=1.0), envelope.count), now, POLICY, rng=rng)
        if decision.kind != "retry":
            break
        (envelope,) = decision.retry
        now = envelope.not_before_ns
    assert decision.kind == "dead_letter" and attempts == POLICY.max_attempts


def test_large_decisions_split_retry_envelopes_and_dead_letters_to_the_size_limit():
    metrics = tagged(6000)
    envelopes = envelopes_for("dynatrace", metrics, "503", NOW_NS)
    envelope = envelopes[0]
    count = envelope.count
    report = AttemptReport(pending={i: "HTTP 503" for i in range(0, count, 2)}, dropped={i: "x" * 2000 for i in range(1, count, 2)})
    decision = decide(envelope, report, NOW_NS, POLICY)
    assert all(len(e.to_text()) <= MAX_TEXT for e in decision.retry)
    assert all(len(d.to_text()) <= MAX_TEXT for d in decision.dead_letters)
    assert sum(e.count for e in decision.retry) + sum(d.envelope.count for d in decision.dead_letters) == count


# -- dead-letter records ---------------------------------------------------------------------


def test_a_dead_letter_record_round_trips_and_replays_as_a_fresh_envelope():
    envelope = envelope_of(every_kind(), attempt=4, first_failure_ns=NOW_NS - 100 * S)
    record = DeadLetter(envelope, "gave up after 4 attempts: HTTP 503", NOW_NS + 7)
    back = DeadLetter.from_text(record.to_text())
    assert back == record and metrics_of(back.envelope) == every_kind()
    replay = back.replayed(NOW_NS + 50 * S, new_id=ids(9))
    assert (replay.attempt, replay.first_failure_ns, replay.not_before_ns) == (1, NOW_NS + 50 * S, NOW_NS + 50 * S)
    assert replay.id == str(uuid.UUID(int=9)) and replay.metrics == envelope.metrics


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"reason": None}, "dead-letter record field 'reason': a string is required"),
        ({"dead_lettered_at": "yesterday"}, "dead-letter record field 'dead_lettered_at': not an RFC 3339"),
        ({"envelope": {"sink": "dynatrace"}}, "dead-letter record field 'envelope' field 'id': required"),
        ({"extra": 1}, "dead-letter record: unexpected field 'extra'"),
    ],
)
def test_invalid_dead_letter_records_are_refused_naming_the_field(change, expected):
    doc = json.loads(DeadLetter(envelope_of(every_kind()), "why", NOW_NS).to_text())
    for key, value in change.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    with pytest.raises(EnvelopeError) as caught:
        DeadLetter.from_text(json.dumps(doc))
    assert str(caught.value).startswith(expected)


def test_the_retry_core_never_imports_azure_functions():
    code = "import sys, bridges.retry.decision; assert 'azure.functions' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_a_decision_says_the_most_hopeful_kind():
    assert Decision().kind == "done"
