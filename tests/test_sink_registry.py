"""Adding a sink is what README's "Adding a sink" says: one package and one registry line.

A copy of the bridge gets a new sink that way, and nothing else; a separate interpreter then
checks that settings, BRIDGE_SINKS, health, delivery, retry envelopes and the command line all
know it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from support import ROOT

from bridges.delivery.sinks import SINK_NAMES

DECLARATION = '''
"""Acme: JSON lines to an Acme collector, with a bearer token."""
from __future__ import annotations

from bridges.delivery.sinks.declaration import SinkDeclaration
from bridges.setting_rows import Setting, http_url, token


def _build(settings):
    from bridges.delivery.sinks.acme.sink import AcmeSink

    return AcmeSink(settings.acme_url, settings.acme_token)


SINK = SinkDeclaration(
    name="acme",
    settings=(
        Setting("ACME_URL", "", http_url, "The collector's URL.", "acme"),
        Setting("ACME_TOKEN", "", token, "The collector's token.", "acme"),
    ),
    required=("ACME_URL", "ACME_TOKEN"),
    build=_build,
)
'''

SINK = '''
"""The Acme sink: one JSON object per metric and line."""
from __future__ import annotations

import json

from bridges.delivery.sinks.base import Encoded, Limits, Misconfigured, Request, Sink, outcomes_with


class AcmeSink(Sink):
    name = "acme"
    title = "Acme"
    limits = Limits(max_body_bytes=100_000)
    status_outcomes = outcomes_with({418: Misconfigured("Acme is a teapot: check ACME_URL")})

    def __init__(self, url, token):
        self.url, self._token = url, token

    def encode(self, metrics, now_ns):
        body = "".join(json.dumps({"name": m.name}) + "\\n" for m in metrics).encode()
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        return Encoded([Request("POST", self.url, headers, body, tuple(range(len(metrics))))])
'''

CHECK = '''
import json, subprocess, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from bridges.core import Bridge
from bridges.delivery.sinks.base import Reply
from bridges.model import Gauge, Metric
from bridges.retry.envelopes import Envelope, envelopes_for
from bridges.settings import SETTINGS, load_settings

received = []

class Collector(BaseHTTPRequestHandler):
    def do_POST(self):
        received.append((self.headers["Authorization"], self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Collector)
threading.Thread(target=server.serve_forever, daemon=True).start()
env = {"ACME_URL": f"http://127.0.0.1:{server.server_port}/in", "ACME_TOKEN": "acme-SECRET",
       "BRIDGE_DELIVERY": "inline", "BRIDGE_STATE_DIR": sys.argv[1]}
settings = load_settings(env)
bridge = Bridge(settings)
answer = bridge.ingest(json.dumps([{"name": "m", "gauge": {"value": 1}}]).encode(), "application/json")
sink = bridge.delivery.sinks[0]
request = sink.encode([Metric("m", Gauge(1), 0)], 0).requests[0]
[envelope] = envelopes_for("acme", [Metric("m", Gauge(1), 0)], "Acme answered 503", 0)
print(json.dumps({
    "settings": [s.name for s in SETTINGS if s.sink == "acme"],
    "enabled": settings.enabled_sinks,
    "partial": load_settings({"ACME_URL": env["ACME_URL"], "BRIDGE_STATE_DIR": sys.argv[1]}).sink_problems,
    "named": load_settings({**env, "BRIDGE_SINKS": "acme,outbox"}).enabled_sinks,
    "delivered": answer.body["delivery"]["acme"]["delivered"],
    "received": [[auth, body.decode()] for auth, body in received],
    "teapot": sink.classify(request, Reply(418)).hint,
    "envelope": Envelope.from_text(envelope.to_text()).sink,
    "health": bridge.health().body["sinks"]["acme"],
    "deadletter": subprocess.run([sys.executable, "-m", "bridges", "deadletter", "list", "--help"], capture_output=True,
                                 text=True).stdout,
}))
'''


def test_a_sink_added_as_one_package_and_one_registry_line_is_known_everywhere(tmp_path):
    copy = tmp_path / "bridge"
    for part in ("bridges", "schemas", "mappings"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    package = copy / "bridges" / "delivery" / "sinks" / "acme"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(DECLARATION))
    (package / "sink.py").write_text(textwrap.dedent(SINK))
    registry = copy / "bridges" / "delivery" / "sinks" / "__init__.py"
    text = registry.read_text()
    last = f"    {SINK_NAMES[-1]}.SINK,\n"
    assert text.count(last) == 1 and "import azure_monitor," in text
    registry.write_text(text.replace(last, last + "    acme.SINK,\n").replace("import azure_monitor,", "import acme, azure_monitor,"))

    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "state")], cwd=copy, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["settings"] == ["ACME_URL", "ACME_TOKEN"]
    assert seen["enabled"] == ["acme"]
    assert seen["partial"] == ["acme: ACME_TOKEN is not set"]
    assert seen["named"] == ["acme", "outbox"]
    assert seen["delivered"] == 1
    assert seen["received"] == [["Bearer acme-SECRET", '{"name": "m"}\n']]
    assert seen["teapot"] == "Acme is a teapot: check ACME_URL"
    assert seen["envelope"] == "acme"
    assert seen["health"] == {"configured": True}
    assert "acme" in seen["deadletter"]  # deadletter list --sink offers it
