"""What the local hosts share: the app settings in force, BRIDGE_STATE_DIR, host.json, and how
a function is invoked.

Kept apart so the HTTP, timer and queue hosts and the start-up code in ``server`` take these from
one place and none of the hosts imports another.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
from pathlib import Path

from bridges.local.indexing import IndexedFunction
from bridges.settings import SETTINGS


def app_settings() -> dict[str, str]:
    """The app settings in force: the environment (with local.settings.json's ``Values``)."""
    return {name: value for name, value in os.environ.items() if value.strip()}


def state_dir(project_dir: Path) -> Path:
    """BRIDGE_STATE_DIR (its default when unset): the SQLite queues and the function key."""
    default = next(setting.default for setting in SETTINGS if setting.name == "BRIDGE_STATE_DIR")
    return project_dir / (app_settings().get("BRIDGE_STATE_DIR") or default)


def host_json(project_dir: Path) -> dict:
    try:
        return json.loads((project_dir / "host.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def invoke(function: IndexedFunction, argument: object) -> object:
    """Call the function with its trigger argument; an ``async def`` is run to completion."""
    arg_name = function.trigger["name"]
    result = function.user_function(**{arg_name: argument})
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]  # an async def's result: a coroutine
    return result
