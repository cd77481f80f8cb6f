"""Read what the Functions host would index: ``app.get_functions()`` and each binding JSON.

``get_functions()`` may be called only once per app (a second call raises in azure-functions
1.26), so the index is built once and kept.
"""
from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import azure.functions as func


@dataclass
class IndexedFunction:
    name: str
    trigger: dict
    bindings: list[dict]
    user_function: Callable = field(repr=False)

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]

    @property
    def auth_level(self) -> str:
        return str(self.trigger.get("authLevel", "")).upper()

    @property
    def route(self) -> str:
        return self.trigger.get("route") or self.name

    @property
    def methods(self) -> list[str]:
        return [m.upper() for m in self.trigger.get("methods") or []]

    def describe(self) -> str:
        """Route, schedule or queue: what makes this function run."""
        if self.trigger_type == "httpTrigger":
            return self.route
        if self.trigger_type == "timerTrigger":
            return self.trigger.get("schedule", "")
        return self.trigger.get("queueName", "")


def load_app(module_name: str = "function_app", project_dir: Path | None = None) -> func.FunctionApp:
    """Import the module the host would import and return its FunctionApp."""
    project_dir = project_dir or Path.cwd()
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if isinstance(value, func.FunctionApp):
            return value
    raise RuntimeError(f"{module_name} defines no azure.functions.FunctionApp")


def index(app: func.FunctionApp) -> list[IndexedFunction]:
    indexed = []
    for function in app.get_functions():
        bindings = json.loads(function.get_function_json())["bindings"]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        indexed.append(
            IndexedFunction(function.get_function_name(), trigger, bindings, function.get_user_function())  # type: ignore[arg-type]  # name typed Optional; an indexed function has one
        )
    return indexed
