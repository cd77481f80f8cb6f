"""The local runner as a user meets it: a subprocess answering over a real socket."""
from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import pytest
import requests
from runner import raw_request, running_bridge, wait_for_line

GAUGE = {"name": "queue_depth", "gauge": {"value": 7}, "tags": {"queue": "orders"}}


@pytest.fixture(scope="module")
def bridge_url(tmp_path_factory):
    outbox = tmp_path_factory.mktemp("outbox")
    env = {"BRIDGE_OUTBOX_DIR": str(outbox), "BRIDGE_MAX_BODY_BYTES": "4096"}
    with running_bridge(env=env) as (base, lines):
        yield base, outbox, lines


def test_banner_lists_routes_and_a_working_curl_example(bridge_url):
    base, _, lines = bridge_url
    text = "\n".join(lines)
    assert f"ingest_metrics: [POST] {base}/api/metrics" in text
    assert f"health: [GET] {base}/api/health" in text
    assert f"curl -sS -X POST {base}/api/metrics" in text


def test_accepts_metrics_and_writes_the_outbox(bridge_url):
    base, outbox, lines = bridge_url
    answer = requests.post(f"{base}/api/metrics", json=[GAUGE, {"name": "q", "gauge": {"value": "x"}}], timeout=10)
    assert answer.status_code == 202
    assert answer.json()["errors"] == [{"index": 1, "pointer": "/1/gauge/value", "message": "'x' is not of type 'number'"}]
    assert answer.json()["delivery"] == {"queued": 1}
    # The runner's delivery function writes the outbox a moment after the answer.
    written: list[dict] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and GAUGE not in written:
        text = "".join(f.read_text() for f in sorted(Path(outbox).glob("*.ndjson")))
        if text.endswith("\n"):  # whole lines only
            written = [{k: v for k, v in json.loads(l).items() if k != "dt"} for l in text.splitlines()]
        time.sleep(0.1)
    assert GAUGE in written
    assert not [line for line in written if line["name"] == "q"]
    wait_for_line(lines, "POST /api/metrics -> ingest_metrics 202")


def test_msgpack_and_ndjson_over_the_socket(bridge_url):
    base, _, _ = bridge_url
    packed = requests.post(f"{base}/api/metrics", data=msgpack.packb([GAUGE]), headers={"Content-Type": "application/msgpack"}, timeout=10)
    assert packed.status_code == 202
    lines = requests.post(f"{base}/api/metrics", data=json.dumps(GAUGE) + "\n", headers={"Content-Type": "application/x-ndjson"}, timeout=10)
    assert lines.status_code == 202


def test_chunked_upload(bridge_url):
    base, _, _ = bridge_url
    chunks = (part.encode() for part in ['[{"name":"a",', '"gauge":{"value":1}}]'])
    answer = requests.post(f"{base}/api/metrics", data=chunks, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 202


def test_rejections_over_the_socket(bridge_url):
    base, _, _ = bridge_url
    none_valid = requests.post(f"{base}/api/metrics", json={"metrics": [{"name": "a", "gauge": {"value": 1}, "dt": "soon"}]}, timeout=10)
    assert none_valid.status_code == 400
    assert none_valid.json()["errors"][0]["pointer"] == "/metrics/0/dt"
    malformed = requests.post(f"{base}/api/metrics", data=b'{"name": "a",', headers={"Content-Type": "application/json"}, timeout=10)
    assert malformed.status_code == 400 and malformed.json()["position"] == 13
    too_big = requests.post(f"{base}/api/metrics", json=[GAUGE] * 200, timeout=10)
    assert too_big.status_code == 413 and "BRIDGE_MAX_BODY_BYTES" in too_big.json()["error"]
    wrong_type = requests.post(f"{base}/api/metrics", data="x", headers={"Content-Type": "text/csv"}, timeout=10)
    assert wrong_type.status_code == 415
    assert wrong_type.headers["Content-Type"].startswith("application/json")


def test_health_and_unknown_routes(bridge_url):
    base, _, _ = bridge_url
    health = requests.get(f"{base}/api/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert requests.get(f"{base}/api/nothing-here", timeout=10).status_code == 404
    wrong_method = requests.get(f"{base}/api/metrics", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    for method in ("TRACE", "QUERY", "PROPFIND"):  # methods http.server alone answers 501 in HTML
        other = requests.request(method, f"{base}/api/metrics", timeout=10)
        assert (other.status_code, other.headers["Allow"]) == (405, "POST"), method
        assert "POST" in other.json()["error"]


def test_keys_are_demanded_only_when_asked(tmp_path):
    with running_bridge("--require-keys", env={"BRIDGE_STATE_DIR": str(tmp_path)}) as (base, lines):
        key = (tmp_path / "function-key").read_text().strip()
        assert key not in "\n".join(lines)
        assert requests.post(f"{base}/api/metrics", json=GAUGE, timeout=10).status_code == 401
        assert requests.post(f"{base}/api/metrics", json=GAUGE, headers={"x-functions-key": "wrong"}, timeout=10).status_code == 401
        assert requests.post(f"{base}/api/metrics", json=GAUGE, headers={"x-functions-key": key}, timeout=10).status_code == 202
        assert requests.post(f"{base}/api/metrics?code={key}", json=GAUGE, timeout=10).status_code == 202
        assert requests.get(f"{base}/api/health", timeout=10).status_code == 200
        with requests.Session() as session:  # a refused body must not be read as the next request
            assert session.post(f"{base}/api/metrics", json=[GAUGE] * 50, timeout=10).status_code == 401
            assert session.post(f"{base}/api/metrics", json=GAUGE, headers={"x-functions-key": key}, timeout=10).status_code == 202


def test_route_parameters_methods_errors_and_timers(tmp_path):
    ticks = tmp_path / "ticks.ndjson"
    env = {"SAMPLE_SCHEDULE": "*/1 * * * * *", "SAMPLE_TIMER_FILE": str(ticks)}
    with running_bridge("--app", "tests.apps.sample_app", env=env) as (base, lines):
        assert requests.get(f"{base}/api/items/42?x=1", timeout=10).json() == {"id": "42", "params": {"x": "1"}}
        assert requests.get(f"{base}/api/ITEMS/special", timeout=10).json() == {"special": True}
        assert requests.get(f"{base}/api/items/abc", timeout=10).status_code == 404
        assert requests.get(f"{base}/api/files/a/b/c.txt", timeout=10).json() == {"path": "a/b/c.txt", "method": "GET", "size": 0}
        assert requests.put(f"{base}/api/files/x", data=b"12345", timeout=10).json()["size"] == 5
        assert requests.delete(f"{base}/api/files/x", timeout=10).status_code == 405
        assert requests.post(f"{base}/api/secret", timeout=10).status_code == 201  # keys not demanded locally
        broken = requests.get(f"{base}/api/broken", timeout=10)
        assert broken.status_code == 500 and "broken" in broken.json()["error"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(ticks.read_text().splitlines() if ticks.exists() else []) < 2:
            time.sleep(0.2)
        assert len(ticks.read_text().splitlines()) >= 2
        assert "tick: timer */1 * * * * *" in "\n".join(lines)
        wait_for_line(lines, "timer tick (*/1 * * * * *) succeeded")
        wait_for_line(lines, "RuntimeError: this function always fails")


def test_a_timer_whose_schedule_setting_is_unset_is_not_hosted_and_said_so():
    """As on the host: the function is not run (no default), and the runner says why."""
    with running_bridge("--app", "tests.apps.sample_app", env={"SAMPLE_SCHEDULE": ""}) as (base, lines):
        line = wait_for_line(lines, "tick: not hosted")
        assert "SAMPLE_SCHEDULE" in line and "not set" in line
        assert requests.get(f"{base}/api/items/special", timeout=10).status_code == 200  # the rest runs


def test_a_bad_content_length_is_400(bridge_url):
    answer = raw_request(bridge_url[0], b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400")
    assert "Content-Length" in answer.split("\r\n\r\n", 1)[1]


def test_malformed_chunked_body_is_400(bridge_url):
    request = b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    answer = raw_request(bridge_url[0], request)
    assert answer.startswith("HTTP/1.1 400")
    assert "chunked" in answer.split("\r\n\r\n", 1)[1]


METRIC = b'[{"name":"a","gauge":{"value":1}}]'  # 0x22 bytes
CHUNKED = b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_strict_chunked_body_is_accepted(bridge_url):
    body = b"22;name=value\r\n" + METRIC + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    answer = raw_request(bridge_url[0], CHUNKED.replace(b"Host: x", b"Host: x\r\nConnection: close") + body)
    assert answer.startswith("HTTP/1.1 202")


@pytest.mark.parametrize("size", [b"-1", b"0x22", b" 22", b"+22", b"2_2", b"22 ", b"00000000000000022", b"22\n"],
                         ids=["minus-one", "0x-prefix", "leading-space", "sign", "underscore", "trailing-space", "17-digits", "bare-LF"])
def test_a_chunk_size_is_hex_digits_and_crlf_only(bridge_url, size):
    """Before the fix -1 read until the client closed; the others were read by Python's int()."""
    line = size if size.endswith(b"\n") else size + b"\r\n"
    answer = raw_request(bridge_url[0], CHUNKED + line + METRIC + b"\r\n0\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400")
    assert "Connection: close" in answer and "chunked" in answer.split("\r\n\r\n", 1)[1]


def test_chunk_data_must_end_with_crlf(bridge_url):
    answer = raw_request(bridge_url[0], CHUNKED + b"22\r\n" + METRIC + b"0\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400") and "CRLF" in answer


@pytest.mark.parametrize("first", [b"", METRIC], ids=["first-chunk", "second-chunk"])
def test_a_chunk_past_the_host_limit_is_413_before_its_data(bridge_url, first):
    """Only the size line is sent: an answer at all shows the runner did not wait for the data."""
    from bridges.local.http_host import HOST_MAX_BODY_BYTES

    start = b"%X\r\n%s\r\n" % (len(first), first) if first else b""
    over = b"%X\r\n" % (HOST_MAX_BODY_BYTES - len(first) + 1)
    answer = raw_request(bridge_url[0], CHUNKED + start + over)
    assert answer.startswith("HTTP/1.1 413") and "Connection: close" in answer


def test_a_chunk_size_line_without_end_is_refused(bridge_url):
    answer = raw_request(bridge_url[0], CHUNKED + b"1" * 100_000)
    assert answer.startswith("HTTP/1.1 400")


@pytest.mark.parametrize("body", [
    b"Content-Length: 100\r\n\r\n" + METRIC,
    b"Transfer-Encoding: chunked\r\n\r\n22\r\n" + METRIC + b"\r\n",
], ids=["content-length", "chunked"])
def test_a_body_cut_short_by_the_client_is_no_request(bridge_url, body):
    head = b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    assert raw_request(bridge_url[0], head + body, half_close=True) == ""


@pytest.mark.parametrize("framing, status", [
    (b"Content-Length: 34\r\nTransfer-Encoding: chunked", 400),
    (b"Transfer-Encoding: chunked, gzip", 400),
    (b"Transfer-Encoding: gzip, chunked", 501),
    (b"Content-Length: 34\r\nContent-Length: 5", 400),
    (b"Content-Length: -1", 400),
    (b"Content-Length: +34", 400),
], ids=["both", "chunked-not-last", "unknown-coding", "two-lengths", "negative", "sign"])
def test_uncertain_body_lengths_are_refused_and_the_connection_closed(bridge_url, framing, status):
    request = b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n\r\n"
    answer = raw_request(bridge_url[0], request + b"22\r\n" + METRIC + b"\r\n0\r\n\r\n")
    assert answer.startswith(f"HTTP/1.1 {status}") and "Connection: close" in answer
