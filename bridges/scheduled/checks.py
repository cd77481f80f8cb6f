"""Synthetic checks: HTTP(S) requests run together, each under its own timeout, as metrics.

Declared in ``schemas/checks.schema.json`` form (BRIDGE_CHECKS_FILE or BRIDGE_CHECKS). Every
check runs on its own thread; the run waits for each only until that check's deadline, so a
target that hangs (even in name resolution, which cannot be interrupted) is reported as a
timeout on time and never holds the others or the function. Each result becomes metrics for
every sink (``metrics_of``):

  check_up                     1 or 0; a failed check is tagged reason = timeout, dns,
                               connect, tls, status or assertion
  check_duration_seconds       the whole check, redirects included
  check_dns_seconds, check_connect_seconds, check_tls_seconds, check_first_byte_seconds
                               the phases of the last request, where measured
  check_status_code, check_response_bytes, check_certificate_days_left

tagged check, host, location (BRIDGE_LOCATION) and the check's own tags.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bridges.masking import scrub
from bridges.model import Gauge, Metric
from bridges.scheduled.declared import load_declared, request_body, resolve_headers, reveal_headers, tls_options
from bridges.scheduled.probe import Fetched, FetchError, TlsOptions, fetch
from bridges.settings import Settings, SettingsError
from bridges.webhooks.expressions import compile_expression, jmespath_equals

T = TypeVar("T")
log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_REDIRECTS = 5
DEFAULT_STATUS = ((200, 299),)
_GRACE_SECONDS = 0.5  # beyond a check's timeout before the run stops waiting for its thread
_MAX_MESSAGE_CHARS = 300
_PHASE_METRICS = (("dns", "check_dns_seconds"), ("connect", "check_connect_seconds"),
                  ("tls", "check_tls_seconds"), ("first_byte", "check_first_byte_seconds"))


@dataclass(frozen=True)
class Assertion:
    kind: str  # contains, not_contains, regex, jmespath
    expected: Any  # text, or (expression text, wanted value) for jmespath
    expression: Any = None  # the compiled regex or JMESPath Expression

    def failure(self, body: bytes) -> str | None:
        """Why the body fails this assertion, or None."""
        if self.kind == "jmespath":
            text, wanted = self.expected
            try:
                document = json.loads(body)
            except ValueError:
                return f"jmespath {text!r}: the body is not JSON"
            try:
                found = self.expression.evaluate(document)
            except Exception as exc:  # a function given the wrong type, say: the assertion fails
                return f"jmespath {text!r}: {exc}"
            if not jmespath_equals(found, wanted):
                return f"jmespath {text!r} is {_short(json.dumps(found))}, expected {_short(json.dumps(wanted))}"
            return None
        text = body.decode("utf-8", errors="replace")
        if self.kind == "contains" and self.expected not in text:
            return f"the body does not contain {self.expected!r}"
        if self.kind == "not_contains" and self.expected in text:
            return f"the body contains {self.expected!r}"
        if self.kind == "regex" and not self.expression.search(text):
            return f"the body does not match /{self.expected}/"
        return None


@dataclass(frozen=True)
class Check:
    name: str
    url: str
    method: str = "GET"
    headers: Mapping[str, object] = field(default_factory=dict)  # values: text or Secret
    body: bytes | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    statuses: tuple[tuple[int, int], ...] = DEFAULT_STATUS
    redirects: int = DEFAULT_REDIRECTS
    assertions: tuple[Assertion, ...] = ()
    tls: TlsOptions = TlsOptions()
    min_days_remaining: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


@dataclass
class CheckResult:
    check: Check
    reason: str | None  # None when the check passed
    message: str
    duration: float
    phases: dict[str, float] = field(default_factory=dict)
    status: int | None = None
    size: int | None = None
    certificate_days: float | None = None

    @property
    def up(self) -> bool:
        return self.reason is None


# --- declarations ------------------------------------------------------------------------------


def load_checks(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    """The declared checks, validated; SettingsError names the setting, file and field."""
    declared, where = load_declared("BRIDGE_CHECKS_FILE", settings.checks_file, "BRIDGE_CHECKS", settings.checks,
                                    "checks.schema.json", "checks")
    return [_check(entry, environ, f"{where}: at /checks/{index}") for index, entry in enumerate(declared)]


def _check(entry: dict, environ: Mapping[str, str], where: str) -> Check:
    headers = resolve_headers(entry.get("headers", {}), environ, where)
    body = request_body(entry.get("body"), headers)
    tls = entry.get("tls", {})
    return Check(
        name=entry["name"],
        url=entry["url"],
        method=entry.get("method", "GET"),
        headers=headers,
        body=body,
        timeout=float(entry.get("timeout", DEFAULT_TIMEOUT_SECONDS)),
        statuses=tuple(_status_range(s) for s in entry.get("status", ())) or DEFAULT_STATUS,
        redirects=entry.get("redirects", DEFAULT_REDIRECTS),
        assertions=tuple(_assertion(a, f"{where}/assertions/{i}") for i, a in enumerate(entry.get("assertions", ()))),
        tls=tls_options(tls, where),
        min_days_remaining=tls.get("min_days_remaining"),
        tags=dict(entry.get("tags", {})),
    )


def _status_range(status: int | str) -> tuple[int, int]:
    if isinstance(status, int):
        return status, status
    if status.endswith("xx"):
        first = int(status[0]) * 100
        return first, first + 99
    low, _, high = status.partition("-")
    return int(low), int(high or low)


def _assertion(spec: dict, where: str) -> Assertion:
    if "regex" in spec:
        try:
            return Assertion("regex", spec["regex"], re.compile(spec["regex"]))
        except re.error as exc:
            raise SettingsError(f"{where}/regex: not a valid regular expression: {exc}") from None
    if "jmespath" in spec:
        try:
            compiled = compile_expression(spec["jmespath"])
        except ValueError as exc:
            raise SettingsError(f"{where}/jmespath: {exc}") from None
        try:  # YAML reads 2024-01-01 as a date, which no JSON body holds (and a message cannot show)
            json.dumps(spec["equals"])
        except (TypeError, ValueError):
            raise SettingsError(f"{where}/equals: {spec['equals']!r} is not a JSON value (quote it)") from None
        return Assertion("jmespath", (spec["jmespath"], spec["equals"]), compiled)
    kind = "contains" if "contains" in spec else "not_contains"
    return Assertion(kind, spec[kind])


# --- running -----------------------------------------------------------------------------------


def run_checks(checks: Sequence[Check], fetcher: Callable[..., Fetched] = fetch) -> list[CheckResult]:
    """Every check at once; results in the checks' order."""
    return run_together(
        [functools.partial(run_check, check, fetcher) for check in checks],
        [check.timeout for check in checks],
        [functools.partial(CheckResult, check, "timeout", f"no answer within {check.timeout:g} s", check.timeout)
         for check in checks],
    )


def run_together(calls: Sequence[Callable[[], T]], timeouts: Sequence[float], late: Sequence[Callable[[], T]],
                 clock: Callable[[], float] = time.monotonic) -> list[T]:
    """Each call on its own thread, all at once. The run waits for each only until its timeout
    (from the start, plus a little grace); a call still running then gives ``late()`` instead
    and its daemon thread is left to end on its own, so a hang never holds the run."""
    started = clock()
    futures = []
    for call in calls:
        future: Future = Future()
        threading.Thread(target=_settle, args=(future, call), daemon=True).start()
        futures.append(future)
    results = []
    for future, timeout, fallback in zip(futures, timeouts, late, strict=True):
        try:
            results.append(future.result(timeout=max(0.0, started + timeout + _GRACE_SECONDS - clock())))
        except TimeoutError:
            results.append(fallback())
    return results


def _settle(future: Future, call: Callable[[], object]) -> None:
    try:
        future.set_result(call())
    except BaseException as exc:  # a bug must not leave the run waiting for the timeout
        future.set_exception(exc)


def run_check(check: Check, fetcher: Callable[..., Fetched] = fetch, wall_clock: Callable[[], float] = time.time) -> CheckResult:
    """One check: the request, then status, certificate and body assertions, first failure wins."""
    try:
        response = fetcher(check.url, method=check.method, headers=reveal_headers(check.headers), body=check.body,
                           timeout=check.timeout, redirects=check.redirects, tls=check.tls)
    except FetchError as exc:
        days = exc.certificate.days_left(wall_clock()) if exc.certificate else None
        return CheckResult(check, exc.reason, _short(exc.message), exc.duration, dict(exc.phases), certificate_days=days)
    except Exception as exc:  # a fault here must not cost the run's other checks their results
        log.error("check %s: unexpected failure: %s", check.name, scrub(f"{type(exc).__name__}: {exc}"))
        return CheckResult(check, "connect", f"unexpected failure: {type(exc).__name__}", 0.0)
    days = response.certificate.days_left(wall_clock()) if response.certificate else None
    result = CheckResult(check, None, f"{response.status} {response.reason}".strip(), response.duration,
                         dict(response.phases), response.status, response.size, days)
    if not any(low <= response.status <= high for low, high in check.statuses):
        result.reason, result.message = "status", f"status {response.status}, expected {_statuses(check.statuses)}"
    elif check.min_days_remaining is not None and days is not None and days < check.min_days_remaining:
        result.reason = "tls"
        result.message = f"the certificate expires in {days:.1f} days, fewer than {check.min_days_remaining:g}"
    else:
        for assertion in check.assertions:
            problem = assertion.failure(response.body)
            if problem:
                result.reason, result.message = "assertion", _short(problem)
                break
    return result


def _statuses(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 1] + "…"


# --- what a run yields ------------------------------------------------------------------------


def metrics_of(results: Sequence[CheckResult], location: str, now_ns: int) -> list[Metric]:
    metrics = []
    for result in results:
        check = result.check
        own = {"check": check.name, "host": check.host, "location": location}
        # reason is the bridge's too: a check's own reason tag would mark an up check as failed.
        tags = {**{k: v for k, v in check.tags.items() if k != "reason"}, **own}
        base = tuple(sorted(tags.items()))
        up_tags = base if result.up else tuple(sorted({**tags, "reason": result.reason}.items()))

        def gauge(name: str, value: float, tags: tuple = base, unit: str | None = None) -> None:
            metrics.append(Metric(name, Gauge(value), now_ns, tags, unit=unit))

        gauge("check_up", 1 if result.up else 0, up_tags)
        gauge("check_duration_seconds", round(result.duration, 6), unit="s")
        for phase, name in _PHASE_METRICS:
            if phase in result.phases:
                gauge(name, round(result.phases[phase], 6), unit="s")
        if result.status is not None:
            gauge("check_status_code", result.status)
        if result.size is not None:
            gauge("check_response_bytes", result.size, unit="By")
        if result.certificate_days is not None:
            gauge("check_certificate_days_left", round(result.certificate_days, 3), unit="d")
    return metrics


def table(results: Sequence[CheckResult]) -> str:
    """A readable summary, one line per check."""
    rows = [("CHECK", "UP", "REASON", "STATUS", "SECONDS", "CERT DAYS", "DETAIL")]
    for result in results:
        rows.append((
            result.check.name, "up" if result.up else "DOWN", result.reason or "-",
            str(result.status) if result.status is not None else "-", f"{result.duration:.3f}",
            f"{result.certificate_days:.1f}" if result.certificate_days is not None else "-", result.message,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
                     for row in rows)
