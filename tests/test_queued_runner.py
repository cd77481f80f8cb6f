"""Queued delivery on the local runner, over real HTTP: a webhook is answered while a backend
hangs, and the delivery function still gets the metrics to every sink that works."""
from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timezone

import requests
from fakes.betterstack import FakeBetterStack
from runner import running_bridge, wait_until
from support import ROOT

BS_TOKEN = "bs-runner-token"
DT_TOKEN = "dt0c01.RUNNERTOKEN"
ALERTMANAGER = json.loads((ROOT / "tests/testdata/webhooks/alertmanager/firing_and_resolved.json").read_text())


class HangingBackend:
    """Accepts connections and reads, but never answers until ``release()`` closes them."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.requests_started = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _accept(self) -> None:
        self.server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            self.connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        try:
            if connection.recv(65536):
                self.requests_started += 1
            while connection.recv(65536):
                pass
        except OSError:
            pass

    def open_connections(self) -> int:
        return sum(c.fileno() != -1 for c in self.connections)

    def release(self) -> None:
        for connection in self.connections:
            connection.close()

    def __enter__(self) -> "HangingBackend":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.release()
        self.server.close()


def alert(number: int) -> dict:
    """A single-alert Alertmanager webhook, a distinct group each time (no idempotency clash)."""
    payload = json.loads(json.dumps(ALERTMANAGER))
    payload["groupKey"] = f'{{}}:{{alertname="queued-{number}"}}'
    payload["alerts"] = payload["alerts"][:1]
    payload["alerts"][0]["fingerprint"] = f"{number:016x}"
    payload["alerts"][0]["status"] = "firing"
    payload["alerts"][0]["startsAt"] = datetime.now(timezone.utc).isoformat()  # inside every backend's window
    return payload


def test_a_webhook_is_answered_while_a_sink_hangs_and_the_healthy_sink_still_gets_every_alert():
    with HangingBackend() as hanging, FakeBetterStack(BS_TOKEN) as healthy:
        env = {"DYNATRACE_URL": hanging.url, "DYNATRACE_API_TOKEN": DT_TOKEN,
               "BETTERSTACK_URL": healthy.url, "BETTERSTACK_SOURCE_TOKEN": BS_TOKEN,
               "BRIDGE_HTTP_TIMEOUT_SECONDS": "4", "BRIDGE_DELIVERY_LINGER_SECONDS": "0"}
        with running_bridge(env=env) as (base, lines):
            session = requests.Session()
            first = session.post(f"{base}/api/webhooks/alertmanager", json=alert(1), timeout=30)
            assert first.status_code == 202 and first.json()["delivery"] == {"queued": first.json()["accepted"]}
            # the delivery function is now stuck on the hanging backend
            wait_until(lambda: hanging.requests_started == 1 and healthy.received, 30,
                       "delivery under way:\n" + "\n".join(lines))
            second = session.post(f"{base}/api/webhooks/alertmanager", json=alert(2), timeout=30)
            still_hanging = hanging.open_connections()
            assert second.status_code == 202 and second.json()["accepted"] == first.json()["accepted"]
            assert still_hanging == 1 and hanging.requests_started == 1  # answered while the sink hung
            hanging.release()
            wait_until(lambda: len(healthy.received) == 2, 30, "the second alert delivered to the healthy sink")
            health = session.get(f"{base}/api/health", timeout=30).json()
    assert health["delivery"]["mode"] == "queued" and health["delivery"]["queue"] == "bridge-deliver"
    assert any("deliver_accepted" in line for line in lines)
