"""The process-wide Bridge that triggers use.

``start()`` validates the settings when the host imports the app; a bad setting never stops
the functions from indexing (each answers 503 naming it); the Bridge itself (schemas, codecs, sinks) is built on first use,
keeping the import that every cold start pays small.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from bridges.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from bridges.core import Bridge
    from bridges.delivery.queued import DeliveryWorker
    from bridges.retry.worker import RetryWorker

log = logging.getLogger(__name__)
_settings: Settings | None = None
_problem: SettingsError | None = None
_bridge: Bridge | None = None
_worker: RetryWorker | None = None
_delivery_worker: DeliveryWorker | None = None
_building = threading.RLock()  # concurrent first requests share one Bridge (and its rate limiters)


def start() -> Settings | None:
    """Validate the settings when the host imports the app. A bad one never stops indexing:
    it is logged and kept (``problem()``), every function still indexes, and each answers 503
    naming it (health too) until the setting is fixed. Logs every sink left out for want of a
    setting (health reports them too)."""
    global _settings, _problem
    try:
        settings = load_settings()
        if settings.mappings_dir is not None:
            check_mappings(settings)
        check_declarations(settings)
    except SettingsError as exc:
        _settings, _problem = None, exc
        log.error("the app's settings are not valid, every function answers 503 until fixed: %s", exc)
        return None
    _settings, _problem = settings, None
    for problem in settings.sink_problems:
        log.warning("sink not enabled: %s", problem)
    return settings


def problem() -> SettingsError | None:
    """The bad setting found at start-up, if any."""
    return _problem


def check_declarations(settings: Settings) -> None:
    """Declared checks, polled sources and routes load (files valid, secret settings set), or
    start-up stops naming the setting, file and field. Nothing is read when none are declared."""
    from bridges.settings import environment

    if settings.checks_file is not None or settings.checks.strip():
        from bridges.scheduled.checks import load_checks

        load_checks(settings, environment())
    if settings.routes_file is not None or settings.routes.strip():
        from bridges.routing import routes_of

        routes_of(settings)
    if settings.sources_file is not None or settings.sources.strip():
        from bridges.scheduled.polling import load_sources
        from bridges.webhooks.handler import load_sources as load_rule_files

        load_sources(settings, environment(), lambda: load_rule_files(settings))


def check_mappings(settings: Settings) -> None:
    """The user's rule files (and the built-in ones they extend) load, or start-up stops
    naming the file, rule and field. Without BRIDGE_MAPPINGS_DIR only the built-in rules are
    used, which the tests check, so cold starts do not pay for loading them."""
    from bridges.webhooks.handler import load_sources
    from bridges.webhooks.rule_files import MappingError

    assert settings.mappings_dir is not None  # start() checks the mappings only when the folder is set
    if not settings.mappings_dir.is_dir():
        raise SettingsError(f"BRIDGE_MAPPINGS_DIR: {settings.mappings_dir} is not a folder")
    try:
        load_sources(settings)
    except MappingError as exc:
        raise SettingsError(f"BRIDGE_MAPPINGS_DIR: {exc}") from None


def bridge() -> Bridge:
    """Raises SettingsError naming the bad setting while the settings are not valid."""
    global _bridge
    with _building:
        if _bridge is None:
            from bridges.core import Bridge

            # A problem found at start-up stays until the host restarts the app (it does on a
            # settings change). A fresh exception each time: re-raising the kept one would grow
            # its traceback with every request.
            settings = _settings or (None if _problem is not None else start())
            if settings is None:
                raise SettingsError(str(_problem))
            _bridge = Bridge(settings)
        return _bridge


def retry_worker() -> RetryWorker:
    """The retry function's worker, sharing the Bridge's sinks (and their state)."""
    global _worker
    with _building:
        if _worker is None:
            from bridges.retry.worker import RetryWorker, open_queues

            current = bridge()
            sinks = {sink.name: sink for sink in current.delivery.sinks}
            _worker = RetryWorker(current.settings, sinks, *open_queues(current.settings), delivery=current.delivery)
        return _worker


def delivery_worker() -> DeliveryWorker:
    """The delivery function's worker, on the Bridge's delivery stage and delivery queue."""
    global _delivery_worker
    with _building:
        if _delivery_worker is None:
            from bridges.delivery.queued import worker_for

            _delivery_worker = worker_for(bridge())
        return _delivery_worker


def use(replacement: Bridge | None) -> None:
    """Install a Bridge built by a test (None: rebuild from the settings on next use)."""
    global _bridge, _settings, _worker, _delivery_worker, _problem
    _bridge = replacement
    _worker = None
    _delivery_worker = None
    if replacement is None:
        _settings, _problem = None, None
