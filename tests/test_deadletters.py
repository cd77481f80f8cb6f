"""Dead letters and poison messages (bridges/retry/deadletter*.py): list, show, replay, health status.

On SQLite (a clock the test moves) and, for list and replay, on Azurite too.
"""
from __future__ import annotations

import argparse
import io
import json
import sqlite3
import uuid

import pytest
from support import NOW_NS

from bridges.formats.canonical import encode_ndjson
from bridges.model import Gauge, Metric
from bridges.queues import SqliteQueue, StorageQueue, queue_client
from bridges.retry.deadletter_command import add_deadletter_parser, format_duration, parse_duration, run_deadletter
from bridges.retry.deadletters import POISON_REASON, RetryQueues, open_retry_queues, read_all, retry_status
from bridges.retry.decision import DeadLetter
from bridges.retry.envelopes import Envelope, envelopes_for, metrics_of
from bridges.settings import load_settings

S = 1_000_000_000
NOW = NOW_NS / S


class FakeClock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def sqlite_queues(tmp_path, clock=None) -> RetryQueues:
    path = tmp_path / "queues.sqlite3"
    clock = clock or FakeClock()
    return RetryQueues(*(SqliteQueue(path, name, clock=clock)
                         for name in ("bridge-retry", "bridge-deadletter", "bridge-retry-poison")))


def azurite_queues(azurite) -> RetryQueues:
    env = {"AzureWebJobsStorage": azurite.connection_string}
    base = f"t-{uuid.uuid4().hex[:12]}"
    return RetryQueues(*(StorageQueue.from_settings(name, env) for name in (base, f"{base}-dl", f"{base}-poison")))


@pytest.fixture(params=["sqlite", "azurite"])
def queues(request, tmp_path) -> RetryQueues:
    if request.param == "sqlite":
        return sqlite_queues(tmp_path)
    return azurite_queues(request.getfixturevalue("azurite"))


def metrics(count: int, name: str = "m") -> list[Metric]:
    return [Metric(f"{name}.{i}", Gauge(i + 0.5), NOW_NS - (i + 1) * S, (("host", f"web-{i}"),)) for i in range(count)]


def dead(sink: str, at_ns: int = NOW_NS, count: int = 2, reason: str = "gave up after 5 attempts: HTTP 503",
         attempt: int = 5) -> DeadLetter:
    [envelope] = envelopes_for(sink, metrics(count, sink), "HTTP 503", at_ns - 3600 * S, attempt=attempt)
    return DeadLetter(envelope, reason, at_ns)


def put(q, *records: DeadLetter) -> None:
    for record in records:
        q.send(record.to_text())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bridges")
    add_deadletter_parser(p.add_subparsers(dest="command", required=True))
    return p


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(queues, *argv: str, err=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), err if err is not None else io.StringIO()
    code = run_deadletter(parser().parse_args(["deadletter", *argv]), queues, NOW_NS, out, err)
    return code, out.getvalue(), err.getvalue()


def rows(out: str) -> list[list[str]]:
    return [line.split(None, 5) for line in out.splitlines()[1:]]


def drain(q) -> list[str]:
    """Every message's text (receive + delete), for checking what a queue ended up with."""
    texts = []
    while batch := q.receive(32, 60):
        for m in batch:
            texts.append(m.text)
            q.delete(m)
    return texts


# -- list ------------------------------------------------------------------------------------


def test_list_shows_one_line_each_and_filters_by_sink_and_age(queues):
    long_reason = "dropped on retry: Dynatrace answered 401 " + "x" * 200
    put(queues.deadletter, dead("dynatrace", NOW_NS - 2 * 3600 * S, count=3, reason=long_reason),
        dead("betterstack", NOW_NS - 30 * S), dead("dynatrace", NOW_NS - 3 * 86400 * S))

    code, out, err = run(queues, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "SINK", "METRICS", "ATTEMPT", "AGE", "REASON"]
    by_age = {row[4]: row for row in rows(out)}
    assert set(by_age) == {"2h", "30s", "3d"}
    assert by_age["2h"][1:4] == ["dynatrace", "3", "5"]
    assert by_age["2h"][5].startswith("dropped on retry: Dynatrace answered 401 x") and by_age["2h"][5].endswith("…")
    assert len(by_age["2h"][5]) == 60
    assert "3 dead letters in" in err

    assert sorted(r[4] for r in rows(run(queues, "list", "--sink", "dynatrace")[1])) == ["2h", "3d"]
    assert sorted(r[4] for r in rows(run(queues, "list", "--older-than", "1h")[1])) == ["2h", "3d"]
    assert [r[4] for r in rows(run(queues, "list", "--newer-than", "15m")[1])] == ["30s"]
    assert [r[4] for r in rows(run(queues, "list", "--sink", "dynatrace", "--newer-than", "1d")[1])] == ["2h"]
    code, out, err = run(queues, "list", "--sink", "unleash")
    assert (code, out) == (0, "") and "0 dead letters" in err

    # Listing changed nothing: all three still there, visible, never received.
    assert queues.deadletter.depth() == 3
    assert [m.dequeue_count for m in queues.deadletter.peek(32)] == [0, 0, 0]


def test_list_beyond_one_peek_shows_everything_and_leaves_it_visible(queues):
    put(queues.deadletter, *[dead("dynatrace" if i % 2 else "unleash", count=1) for i in range(35)])
    code, out, _ = run(queues, "list")
    assert code == 0
    ids = [r[0] for r in rows(out)]
    assert len(ids) == len(set(ids)) == 35
    # Released at once: a second listing sees every one again (hidden ones would be missed).
    assert sorted(m.id for m in read_all(queues.deadletter)) == sorted(ids)
    assert queues.deadletter.depth() == 35


def test_bad_durations_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["deadletter", "list", "--older-than", "soon"])
    assert exit_.value.code == 2 and "not a duration" in capsys.readouterr().err
    args = argparse.Namespace(deadletter_command="list", older_than="2 weeks", newer_than=None, sink=None, poison=False)
    err = io.StringIO()
    assert run_deadletter(args, sqlite_queues(tmp_path), NOW_NS, io.StringIO(), err) == 2
    assert "usage error" in err.getvalue()


def test_durations_parse_and_format():
    assert [parse_duration(t) for t in ("30s", "15m", "2h", "1d", "90", "1.5h")] == [30, 900, 7200, 86400, 90, 5400]
    assert [format_duration(s) for s in (0, 59, 60, 3599, 7200, 86399, 3 * 86400, -5)] == \
        ["0s", "59s", "1m", "59m", "2h", "23h", "3d", "0s"]


# -- show ------------------------------------------------------------------------------------


def test_show_prints_the_record_and_its_metrics_as_canonical_ndjson(tmp_path):
    queues = sqlite_queues(tmp_path)
    record = dead("betterstack", NOW_NS - 120 * S, count=3, reason="dropped on retry: HTTP 403")
    put(queues.deadletter, record)
    [message] = queues.deadletter.peek(1)

    code, out, _ = run(queues, "show", message.id)
    assert code == 0
    head, ndjson = out.split("\n\n", 1)
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    assert fields["reason"] == "dropped on retry: HTTP 403"
    assert fields["dead-lettered"] == "2026-11-22T09:58:00Z (2m ago)"
    assert fields["first failure"] == "2026-11-22T08:58:00Z"
    assert (fields["sink"], fields["attempt"], fields["metrics"], fields["envelope"]) == \
        ("betterstack", "5", "3", record.envelope.id)
    assert ndjson.encode() == encode_ndjson(metrics(3, "betterstack"))

    assert run(queues, "show", record.envelope.id)[1] == out  # the envelope id works too
    code, _, err = run(queues, "show", "no-such-id")
    assert code == 1 and "no dead letter or poison message with id no-such-id" in err


# -- replay ----------------------------------------------------------------------------------


def test_replay_moves_records_back_as_fresh_attempts_with_the_same_metrics(queues):
    records = [dead("dynatrace", NOW_NS - 7200 * S, count=3), dead("dynatrace", NOW_NS - 60 * S, count=1),
               dead("betterstack", NOW_NS - 7200 * S)]
    put(queues.deadletter, *records)

    code, _, err = run(queues, "replay", "--sink", "dynatrace")
    assert code == 0, err
    assert "replayed 2 of 2 dead letters" in err
    replayed = [Envelope.from_text(t) for t in drain(queues.retry)]
    assert sorted(e.count for e in replayed) == [1, 3]
    for envelope in replayed:
        original = next(r.envelope for r in records if r.envelope.count == envelope.count and r.envelope.sink == "dynatrace")
        assert (envelope.sink, envelope.attempt, envelope.first_failure_ns, envelope.not_before_ns) == \
            ("dynatrace", 1, NOW_NS, NOW_NS)
        assert envelope.id != original.id
        assert metrics_of(envelope) == metrics_of(original)
    [left] = read_all(queues.deadletter)
    assert DeadLetter.from_text(left.text) == records[2]

    code, _, err = run(queues, "replay", "--all")
    assert code == 0 and "replayed 1 of 1" in err
    assert queues.deadletter.depth() == 0
    [envelope] = [Envelope.from_text(t) for t in drain(queues.retry)]
    assert envelope.sink == "betterstack" and envelope.attempt == 1


def test_replay_by_age_leaves_the_others_visible(tmp_path):
    queues = sqlite_queues(tmp_path)
    put(queues.deadletter, dead("unleash", NOW_NS - 3 * 86400 * S), dead("unleash", NOW_NS - 10 * S))
    code, _, err = run(queues, "replay", "--older-than", "1d")
    assert code == 0 and "replayed 1 of 1" in err
    assert queues.retry.depth() == 1
    [left] = queues.deadletter.peek(32)  # released at once, not held for the replay's duration
    assert DeadLetter.from_text(left.text).at_ns == NOW_NS - 10 * S


def test_replay_without_a_filter_refuses(queues):
    put(queues.deadletter, dead("dynatrace"))
    code, _, err = run(queues, "replay")
    assert code == 2 and "refusing to replay everything" in err and "--all" in err
    assert queues.deadletter.depth() == 1 and queues.retry.depth() == 0
    assert [m.dequeue_count for m in queues.deadletter.peek(32)] == [0]


def test_progress_is_one_final_line_when_stderr_is_not_a_terminal(tmp_path):
    queues = sqlite_queues(tmp_path)
    put(queues.deadletter, *[dead("dynatrace") for _ in range(4)])
    code, _, err = run(queues, "replay", "--all")
    assert code == 0
    assert "\r" not in err
    assert err.splitlines()[0] == "[####################] 4/4"


def test_progress_is_redrawn_in_place_on_a_terminal(tmp_path):
    queues = sqlite_queues(tmp_path)
    put(queues.deadletter, *[dead("dynatrace") for _ in range(4)])
    tty = TTY()
    assert run(queues, "replay", "--all", err=tty)[0] == 0
    drawn = tty.getvalue().split("\n")[0]
    assert drawn.split("\r")[1:] == ["[#####...............] 1/4", "[##########..........] 2/4",
                                     "[###############.....] 3/4", "[####################] 4/4",
                                     "[####################] 4/4"]


def test_what_cannot_be_replayed_is_named_kept_and_exits_1(tmp_path):
    queues = sqlite_queues(tmp_path)
    put(queues.deadletter, dead("dynatrace"))
    queues.deadletter.send('{"reason": "not a record"}')
    code, _, err = run(queues, "replay", "--all")
    assert code == 1
    assert "replayed 1 of 2" in err
    [unreadable] = queues.deadletter.peek(32)  # kept, visible again
    assert f"not replayed: {unreadable.id} (?): unreadable: dead-letter record" in err
    assert queues.retry.depth() == 1


def test_a_retry_queue_that_refuses_keeps_the_record(tmp_path):
    queues = sqlite_queues(tmp_path)
    put(queues.deadletter, dead("dynatrace"))

    class Broken:
        name = "bridge-retry"

        def send(self, text, visibility_timeout=0):
            raise sqlite3.OperationalError("disk I/O error")

    code, _, err = run(RetryQueues(Broken(), queues.deadletter, queues.poison), "replay", "--all")
    assert code == 1
    assert "could not be sent to bridge-retry: local queue file unusable (OperationalError)" in err
    assert len(queues.deadletter.peek(32)) == 1


# -- poison ----------------------------------------------------------------------------------


def test_poison_messages_are_raw_envelopes_listed_and_replayed(tmp_path):
    clock = FakeClock(NOW - 900)  # the host parked it 15 minutes ago
    queues = sqlite_queues(tmp_path, clock)
    [envelope] = envelopes_for("prometheus", metrics(4), "HTTP 503", NOW_NS - 3600 * S, attempt=3)
    queues.poison.send(envelope.to_text())
    clock.now = NOW
    put(queues.deadletter, dead("dynatrace"))

    code, out, err = run(queues, "list", "--poison")
    assert code == 0 and "1 poison messages in bridge-retry-poison" in err
    [row] = rows(out)
    assert row[1:] == ["prometheus", "4", "3", "15m", POISON_REASON]
    assert [r[4] for r in rows(run(queues, "list", "--poison", "--newer-than", "10m")[1])] == []

    [message] = queues.poison.peek(1)
    code, out, _ = run(queues, "show", message.id)
    assert code == 0 and f"reason: {POISON_REASON}" in out

    code, _, err = run(queues, "replay", "--poison", "--sink", "prometheus")
    assert code == 0 and "replayed 1 of 1 poison messages from bridge-retry-poison to bridge-retry" in err
    assert queues.poison.depth() == 0 and queues.deadletter.depth() == 1
    [again] = [Envelope.from_text(t) for t in drain(queues.retry)]
    assert (again.sink, again.attempt, again.first_failure_ns) == ("prometheus", 1, NOW_NS)
    assert metrics_of(again) == metrics_of(envelope)


# -- health ----------------------------------------------------------------------------------


def test_retry_status_counts_dead_letters_per_sink(tmp_path):
    queues = sqlite_queues(tmp_path)
    put(queues.deadletter, dead("dynatrace"), dead("dynatrace"), dead("unleash"))
    queues.deadletter.send("garbage")
    queues.retry.send(dead("betterstack").envelope.to_text())
    assert retry_status(queues.retry, queues.deadletter, queues.poison) == {
        "retry": {"queue": "bridge-retry", "depth": 1},
        "poison": {"queue": "bridge-retry-poison", "depth": 0},
        "deadletter": {"queue": "bridge-deadletter", "depth": 4, "by_sink": {"?": 1, "dynatrace": 2, "unleash": 1},
                       "sampled": False},
    }


def test_retry_status_says_when_per_sink_counts_are_a_sample(tmp_path):
    queues = sqlite_queues(tmp_path)
    put(queues.deadletter, *[dead("dynatrace", count=1) for _ in range(40)])
    dead_letters = retry_status(queues.retry, queues.deadletter, queues.poison)["deadletter"]
    assert dead_letters == {"queue": "bridge-deadletter", "depth": 40, "by_sink": {"dynatrace": 32}, "sampled": True}


def test_retry_status_on_azurite_reports_missing_queues_as_empty_without_creating_them(azurite):
    from azure.core.exceptions import ResourceNotFoundError

    queues = azurite_queues(azurite)
    put(queues.deadletter, dead("azure_monitor"))
    status = retry_status(queues.retry, queues.deadletter, queues.poison)
    assert status["retry"] == {"queue": queues.retry.name, "depth": 0}
    assert status["poison"] == {"queue": queues.poison.name, "depth": 0}
    assert status["deadletter"]["by_sink"] == {"azure_monitor": 1} and status["deadletter"]["sampled"] is False
    with pytest.raises(ResourceNotFoundError):
        queues.retry.client.get_queue_properties()


def test_an_unreachable_queue_is_reported_without_secrets(tmp_path):
    key = "U0VDUkVULUtFWS1ET05PVC1TSE9X" * 3
    conn = (f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};"
            "QueueEndpoint=http://127.0.0.1:9/acct;")
    unreachable = StorageQueue(queue_client("bridge-retry", {"AzureWebJobsStorage": conn}, retry_total=0))
    queues = sqlite_queues(tmp_path)
    status = retry_status(unreachable, queues.deadletter, queues.poison)
    assert status["retry"] == {"queue": "bridge-retry",
                               "error": "storage account unreachable (connection failed or timed out)"}
    assert status["deadletter"]["depth"] == 0
    shown = json.dumps(status)
    assert key not in shown and "AccountKey" not in shown and "127.0.0.1" not in shown

    code, _, err = run(RetryQueues(queues.retry, unreachable, queues.poison), "list")
    assert code == 1 and "storage account unreachable" in err and key not in err


def test_open_retry_queues_uses_the_settings_and_the_poison_name(tmp_path):
    settings = load_settings({"BRIDGE_RETRY_QUEUE": "r", "BRIDGE_DEADLETTER_QUEUE": "d"})
    queues = open_retry_queues(settings, {}, tmp_path)
    assert [q.name for q in (queues.retry, queues.deadletter, queues.poison)] == ["r", "d", "r-poison"]
    assert all(isinstance(q, SqliteQueue) and q.path == tmp_path / "queues.sqlite3"
               for q in (queues.retry, queues.deadletter, queues.poison))
    assert run({"retry": queues.retry, "deadletter": queues.deadletter, "poison": queues.poison}, "list")[0] == 0
