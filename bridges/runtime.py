"""The process-wide Bridge that triggers use, built from the settings once per process."""
from __future__ import annotations

from bridges.core import Bridge
from bridges.settings import load_settings

_bridge: Bridge | None = None


def start() -> Bridge:
    """Validate the settings and build the Bridge; raises SettingsError naming a bad setting."""
    global _bridge
    _bridge = Bridge(load_settings())
    return _bridge


def bridge() -> Bridge:
    return _bridge or start()


def use(replacement: Bridge | None) -> None:
    """Install a Bridge built by a test (or None to rebuild from the settings on next use)."""
    global _bridge
    _bridge = replacement
