"""The core imports and works with azure.functions unavailable: only triggers, local and function_app use it."""
from __future__ import annotations

import ast
import json
import subprocess
import sys

from support import ROOT

ALLOWED = ("bridges/triggers/", "bridges/local/")

SCRIPT = r"""
import importlib.abc, json, pkgutil, sys

class NoAzureFunctions(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "azure.functions" or name.startswith("azure.functions."):
            raise ImportError("azure.functions is blocked in this test")
        return None

sys.meta_path.insert(0, NoAzureFunctions())
import bridges
for module in pkgutil.walk_packages(bridges.__path__, "bridges."):
    if not module.name.startswith(("bridges.triggers", "bridges.local")):
        importlib.import_module(module.name)

from bridges.core import Bridge
from bridges.settings import load_settings
from bridges.delivery.queued import worker_for
bridge = Bridge(load_settings({"BRIDGE_OUTBOX_DIR": sys.argv[1], "BRIDGE_STATE_DIR": sys.argv[2]}))
reply = bridge.ingest(b'[{"name":"a","gauge":{"value":1}},{"name":"b"}]', "application/json")
worker = worker_for(bridge)  # the delivery function's work, as the host would run it
delivered = 0
while messages := bridge.delivery_queue.receive(1, 60):
    delivered += worker.process(messages[0].text).reports["outbox"].delivered
    bridge.delivery_queue.delete(messages[0])
assert "azure.functions" not in sys.modules
print(json.dumps({"status": reply.status, "accepted": reply.body["accepted"], "rejected": reply.body["rejected"],
                  "delivery": reply.body["delivery"], "delivered": delivered}))
"""


def test_core_runs_with_azure_functions_blocked(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "outbox"), str(tmp_path / "state")], cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": 202, "accepted": 1, "rejected": 1, "delivery": {"queued": 1},
                                       "delivered": 1}
    assert len(list((tmp_path / "outbox").glob("*.ndjson"))) == 1


def test_only_triggers_and_local_import_azure_functions():
    offenders = []
    for path in sorted((ROOT / "bridges").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "azure.functions" or n.startswith("azure.functions.") for n in names):
                offenders.append(relative)
    assert offenders == []
