"""Synthetic checks (issue 7) against local HTTP(S) servers the tests start on 127.0.0.1.

Each server runs on threads, on port 0, and is shut down by its fixture. The HTTPS servers use
certificates from a trustme CA made at test time; a check trusts that CA through tls.ca_file.
No assertion here reads the wall clock: timeouts are only checked to be reported as timeouts.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import trustme
from fakes.server import refused_port
from support import drain, outbox_lines, use_bridge

from bridges import runtime
from bridges.__main__ import main
from bridges.scheduled.checks import CheckResult, load_checks, metrics_of, run_checks, table
from bridges.scheduled.probe import fetch
from bridges.settings import SettingsError, load_settings

TOKEN = "tok-7f3a9c-do-not-leak"
JSON_BODY = {"status": "ok", "up": 1, "items": [1, 2, 3]}


# --- local servers ---------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    secure: bool


class _Handler(BaseHTTPRequestHandler):
    """Answers from the server's routes: path -> (status, headers, body) or a callable giving one."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        secure = isinstance(self.connection, ssl.SSLSocket)
        self.server.received.append(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                             body, secure))
        route = self.server.routes.get(urlsplit(self.path).path, (404, {}, b"no such page"))
        status, headers, payload = route(self) if callable(route) else route
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    """With a TLS context, a connection whose first byte opens a TLS handshake is served over TLS
    and any other in plain HTTP, on the same port (so a redirect can go from https to http while
    keeping host and port)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, routes: dict, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes, self.context = routes, context
        self.received: list[Received] = []
        self.release = threading.Event()  # set at teardown: ends the slow answers

    def finish_request(self, request, client_address) -> None:
        if self.context is None:
            return super().finish_request(request, client_address)
        try:
            if request.recv(1, socket.MSG_PEEK) == b"\x16":
                request = self.context.wrap_socket(request, server_side=True)
        except OSError:  # the client refused the certificate: nothing to answer
            return None
        try:
            super().finish_request(request, client_address)
        finally:
            request.close()

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.server_address[1]}{path}"


def _slow(handler: _Handler) -> tuple:
    handler.server.release.wait(10)
    return 200, {}, b"late"


def _routes() -> dict:
    return {
        "/": (200, {"Content-Type": "text/plain"}, b"hello from the service"),
        "/json": (200, {"Content-Type": "application/json"}, json.dumps(JSON_BODY).encode()),
        "/slow": _slow,
    }


@pytest.fixture
def serve():
    """Start servers: serve(routes=None, context=None) -> a running _Server."""
    servers = []

    def start(routes: dict | None = None, context: ssl.SSLContext | None = None) -> _Server:
        server = _Server({**_routes(), **(routes or {})}, context)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def ca(tmp_path):
    """A CA made for this test, and its certificate in a PEM file for tls.ca_file."""
    authority = trustme.CA()
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    authority.path = str(path)
    return authority


@pytest.fixture
def https(serve, ca):
    """Start an HTTPS server: https(*names, not_before=None, not_after=None, routes=None)."""

    def start(*names: str, not_before: datetime | None = None, not_after: datetime | None = None,
              routes: dict | None = None) -> _Server:
        cert = ca.issue_cert(*(names or ("127.0.0.1",)), not_before=not_before, not_after=not_after)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return serve(routes, context)

    return start


@pytest.fixture
def silent_url():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"


def refused_url() -> str:
    return f"http://127.0.0.1:{refused_port()}/"


# --- helpers ---------------------------------------------------------------------------------


def declared(*entries: dict) -> str:
    return json.dumps({"checks": list(entries)})


def load(*entries: dict, environ: dict | None = None):
    return load_checks(load_settings({"BRIDGE_CHECKS": declared(*entries)}), environ or {})


def run(*entries: dict, environ: dict | None = None) -> list[CheckResult]:
    return run_checks(load(*entries, environ=environ))


def run_one(url: str, **entry) -> CheckResult:
    return run({"name": "c", "url": url, **entry})[0]


def now() -> datetime:
    return datetime.now(timezone.utc)


def by_name(metrics) -> dict:
    return {metric.name: metric for metric in metrics}


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- TLS -------------------------------------------------------------------------------------


def test_https_up_reports_the_certificate_days_left(https, ca):
    server = https(not_after=now() + timedelta(days=30))
    result = run_one(server.url(), tls={"ca_file": ca.path})
    assert result.up, result.message
    assert result.status == 200
    assert result.certificate_days == pytest.approx(30, abs=0.1)
    assert "tls" in result.phases


def test_a_certificate_about_to_expire_fails_with_reason_tls(https, ca):
    server = https(not_after=now() + timedelta(days=5))
    result = run_one(server.url(), tls={"ca_file": ca.path, "min_days_remaining": 14})
    assert (result.up, result.reason) == (False, "tls")
    assert "5.0 days" in result.message and "14" in result.message
    assert result.certificate_days == pytest.approx(5, abs=0.1)
    # The same certificate passes when the check asks for fewer days.
    assert run_one(server.url(), tls={"ca_file": ca.path, "min_days_remaining": 3}).up


def test_an_expired_certificate_fails_and_reports_negative_days(https, ca):
    server = https(not_before=now() - timedelta(days=30), not_after=now() - timedelta(days=2))
    result = run_one(server.url(), tls={"ca_file": ca.path})
    assert result.reason == "tls"
    assert "expired" in result.message
    assert result.certificate_days == pytest.approx(-2, abs=0.1)
    days = by_name(metrics_of([result], "local", 0))["check_certificate_days_left"]
    assert days.point.value < 0


def test_a_certificate_for_another_name_fails_unless_the_name_is_not_verified(https, ca):
    server = https("example.test")
    mismatch = run_one(server.url(), tls={"ca_file": ca.path})
    assert mismatch.reason == "tls"
    assert "mismatch" in mismatch.message
    assert run_one(server.url(), tls={"ca_file": ca.path, "verify_hostname": False}).up


def test_an_untrusted_certificate_fails_unless_verification_is_off(https):
    server = https(not_after=now() + timedelta(days=20))
    untrusted = run_one(server.url())
    assert untrusted.reason == "tls"
    assert untrusted.certificate_days == pytest.approx(20, abs=0.1)  # read again, unverified
    trusting = run_one(server.url(), tls={"verify": False})
    assert trusting.up, trusting.message
    assert trusting.certificate_days == pytest.approx(20, abs=0.1)


# --- timeouts --------------------------------------------------------------------------------


def test_a_slow_server_is_a_timeout(serve):
    server = serve()
    result = run_one(server.url("/slow"), timeout=0.5)
    assert (result.up, result.reason) == (False, "timeout")
    assert result.status is None


def test_a_hanging_target_does_not_hold_the_others(serve, silent_url):
    server = serve()
    hung, fast = run({"name": "hung", "url": silent_url, "timeout": 0.5},
                     {"name": "fast", "url": server.url(), "timeout": 5})
    assert (hung.check.name, hung.reason) == ("hung", "timeout")
    assert (fast.check.name, fast.up) == ("fast", True)


def test_a_fetcher_that_never_returns_is_reported_as_a_timeout(serve):
    """Name resolution cannot be interrupted: the run stops waiting for that check at its timeout."""
    server = serve()
    stuck = threading.Event()

    def fetcher(url, **options):
        if "stuck" in url:
            stuck.wait(10)
        return fetch(url, **options)

    checks = load({"name": "stuck", "url": "http://stuck.invalid/", "timeout": 0.3},
                  {"name": "fast", "url": server.url(), "timeout": 5})
    try:
        hung, fast = run_checks(checks, fetcher)
    finally:
        stuck.set()
    assert hung.reason == "timeout"
    assert "0.3 s" in hung.message
    assert fast.up


# --- redirects -------------------------------------------------------------------------------


REDIRECTS = {"/a": (302, {"Location": "/b"}, b""), "/b": (302, {"Location": "/done"}, b""),
             "/done": (200, {}, b"arrived")}


def test_a_chain_of_redirects_is_followed(serve):
    server = serve(REDIRECTS)
    result = run_one(server.url("/a"))
    assert result.up and result.status == 200
    assert [r.path for r in server.received] == ["/a", "/b", "/done"]


def test_redirects_zero_answers_with_the_redirect(serve):
    server = serve(REDIRECTS)
    refused = run_one(server.url("/a"), redirects=0)
    assert (refused.reason, refused.status) == ("status", 302)
    assert run_one(server.url("/a"), redirects=0, status=[302]).up
    assert [r.path for r in server.received] == ["/a", "/a"]


def test_more_redirects_than_allowed_is_a_status_failure(serve):
    server = serve(REDIRECTS)
    result = run_one(server.url("/a"), redirects=1)
    assert (result.reason, result.status) == ("status", 302)
    assert "302" in result.message


def test_credentials_stay_on_the_host_they_were_meant_for(serve):
    other = serve()
    server = serve({"/same": (302, {"Location": "/"}, b""),
                    "/away": (302, {"Location": other.url("/")}, b"")})
    headers = {"Authorization": {"setting": "STATUS_TOKEN", "prefix": "Bearer "}, "X-Api-Key": {"setting": "API_KEY"},
               "X-Trace": "t1"}
    same, away = run({"name": "same", "url": server.url("/same"), "headers": headers},
                     {"name": "away", "url": server.url("/away"), "headers": headers},
                     environ={"STATUS_TOKEN": TOKEN, "API_KEY": "key-42"})
    assert same.up and away.up
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.received)
    assert all(r.headers["x-api-key"] == "key-42" for r in server.received)
    [landed] = other.received
    assert "authorization" not in landed.headers and "x-api-key" not in landed.headers
    assert landed.headers["x-trace"] == "t1"


def test_credentials_are_not_sent_when_a_redirect_leaves_https(https, ca):
    """Same host and port, but the next hop is plain HTTP: the token would cross the wire in clear."""
    server = https()
    server.routes["/down"] = (302, {"Location": server.url("/").replace("https://", "http://")}, b"")
    result = run({"name": "c", "url": server.url("/down"), "tls": {"ca_file": ca.path},
                  "headers": {"Authorization": {"setting": "STATUS_TOKEN"}}}, environ={"STATUS_TOKEN": TOKEN})[0]
    assert result.up, result.message
    first, landed = server.received
    assert first.secure and first.headers["authorization"] == TOKEN
    assert not landed.secure
    assert "authorization" not in landed.headers


# --- status and body assertions --------------------------------------------------------------


def test_a_wrong_status_is_reason_status_with_the_code(serve):
    server = serve({"/broken": (500, {}, b"oops")})
    result = run_one(server.url("/broken"))
    assert (result.reason, result.status) == ("status", 500)
    assert result.message == "status 500, expected 200-299"
    metrics = by_name(metrics_of([result], "local", 0))
    assert metrics["check_status_code"].point.value == 500
    assert metrics["check_up"].tag_dict()["reason"] == "status"


@pytest.mark.parametrize("code, up", [(201, True), (404, True), (500, True), (502, True), (503, True),
                                      (504, False), (403, False), (301, False)])
def test_status_codes_classes_and_ranges(serve, code, up):
    server = serve({"/answer": (code, {}, b"")})
    result = run_one(server.url("/answer"), status=["2xx", 404, "500-503"], redirects=0)
    assert result.up is up
    if not up:
        assert result.message == f"status {code}, expected 200-299, 404, 500-503"


@pytest.mark.parametrize("assertion, failure", [
    ({"contains": "hello"}, None),
    ({"contains": "goodbye"}, "the body does not contain 'goodbye'"),
    ({"not_contains": "error"}, None),
    ({"not_contains": "hello"}, "the body contains 'hello'"),
    ({"regex": r"^hello \w+"}, None),
    ({"regex": r"^bye"}, "the body does not match /^bye/"),
])
def test_text_assertions(serve, assertion, failure):
    result = run_one(serve().url("/"), assertions=[assertion])
    assert result.reason == ("assertion" if failure else None)
    if failure:
        assert result.message == failure


@pytest.mark.parametrize("expression, equals, up", [
    ("status", "ok", True),
    ("length(items)", 3, True),
    ("items[0]", 1, True),
    ("up", 1, True),
    ("up", True, False),  # JMESPath: 1 and true are not equal
    ("status", "degraded", False),
    ("missing", None, True),
])
def test_jmespath_assertions(serve, expression, equals, up):
    result = run_one(serve().url("/json"), assertions=[{"jmespath": expression, "equals": equals}])
    assert result.up is up, result.message
    if not up:
        assert result.reason == "assertion"
        assert result.message.startswith(f"jmespath {expression!r} is ")


def test_jmespath_on_a_body_that_is_not_json(serve):
    result = run_one(serve().url("/"), assertions=[{"jmespath": "status", "equals": "ok"}])
    assert result.reason == "assertion"
    assert result.message == "jmespath 'status': the body is not JSON"


def test_the_first_failing_assertion_is_reported(serve):
    result = run_one(serve().url("/"), assertions=[{"contains": "hello"}, {"contains": "x-missing"},
                                                     {"regex": "^never"}])
    assert result.message == "the body does not contain 'x-missing'"


# --- network failures ------------------------------------------------------------------------


def test_an_unresolvable_host_is_reason_dns():
    result = run_one("http://nothing.invalid/", timeout=5)
    assert result.reason == "dns"
    assert "nothing.invalid" in result.message


def test_a_refused_port_is_reason_connect():
    result = run_one(refused_url(), timeout=5)
    assert result.reason == "connect"
    assert "dns" in result.phases and "connect" not in result.phases


# --- requests --------------------------------------------------------------------------------


def test_post_with_a_json_body(serve):
    server = serve({"/hook": (201, {}, b"")})
    result = run_one(server.url("/hook"), method="POST", body={"ping": [1, True, None]})
    assert result.up
    [received] = server.received
    assert received.method == "POST"
    assert json.loads(received.body) == {"ping": [1, True, None]}
    assert received.headers["content-type"] == "application/json"


def test_a_declared_content_type_is_kept(serve):
    server = serve({"/hook": (200, {}, b"")})
    run_one(server.url("/hook"), method="PUT", body={"a": 1}, headers={"Content-Type": "application/vnd.x+json"})
    assert server.received[0].headers["content-type"] == "application/vnd.x+json"


def test_a_url_with_non_ascii_characters_is_sent_percent_encoded(serve):
    """The schema accepts such a URL; it is sent as a browser would, and what is already encoded stays."""
    server = serve({"/café": (500, {}, b""), "/caf%C3%A9": (200, {}, b"")})
    result = run_one(server.url("/café?q=ü&r=a%20b"))
    assert result.up, result.message
    assert server.received[0].path == "/caf%C3%A9?q=%C3%BC&r=a%20b"


def test_an_international_host_name_is_sent_in_its_ascii_form(serve, monkeypatch):
    """Resolved here to 127.0.0.1; the Host header must be the IDNA form, not text http cannot carry."""
    server = serve()
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *rest, **options: real("127.0.0.1", *rest, **options))
    result = run_one(server.url().replace("127.0.0.1", "пример.test"))
    assert result.up, result.message
    assert server.received[0].headers["host"] == f"xn--e1afmkfd.test:{server.server_address[1]}"


# --- secrets ---------------------------------------------------------------------------------


def test_a_secret_header_is_sent_and_never_shown(serve, settings_env, monkeypatch, caplog, capsys):
    server = serve({"/broken": (503, {}, b"down")})
    headers = {"Authorization": {"setting": "STATUS_TOKEN", "prefix": "Bearer "}}
    checks = declared({"name": "up", "url": server.url("/"), "headers": headers},
                      {"name": "down", "url": server.url("/broken"), "headers": headers},
                      {"name": "refused", "url": refused_url(), "headers": headers, "timeout": 5})
    monkeypatch.setenv("STATUS_TOKEN", TOKEN)  # the checks read secret settings from the environment
    caplog.set_level(logging.DEBUG)
    bridge = use_bridge({**settings_env, "BRIDGE_CHECKS": checks})
    results, metrics = bridge.run_checks()
    assert [r.up for r in results] == [True, False, False]
    assert {r.headers["authorization"] for r in server.received} == {f"Bearer {TOKEN}"}
    shown = [table(results), caplog.text, json.dumps([m.to_json() for m in metrics]),
             json.dumps(outbox_lines(bridge)), *(r.message for r in results), repr(bridge.checks)]
    monkeypatch.setenv("BRIDGE_CHECKS", checks)
    assert main(["check"]) == 1
    shown += capsys.readouterr()
    assert all(TOKEN not in text for text in shown)


def test_a_literal_credential_in_the_file_is_refused(tmp_path):
    path = write(tmp_path / "checks.json", declared(
        {"name": "ok", "url": "https://a.example/"},
        {"name": "api", "url": "https://a.example/", "headers": {"Authorization": f"Bearer {TOKEN}"}}))
    with pytest.raises(SettingsError) as caught:
        load_checks(load_settings({"BRIDGE_CHECKS_FILE": path}), {})
    message = str(caught.value)
    assert message.startswith(f"BRIDGE_CHECKS_FILE: {path}: at /checks/1/headers/Authorization: ")
    assert "setting" in message
    assert TOKEN not in message


@pytest.mark.parametrize("header", ["Cookie", "X-Api-Key", "X-Auth-Token"])
def test_other_credential_headers_are_refused_as_literals(header):
    with pytest.raises(SettingsError, match=f"at /checks/0/headers/{header}: "):
        load({"name": "c", "url": "https://a.example/", "headers": {header: "literal"}})


def test_an_unset_secret_setting_is_named():
    entry = {"name": "c", "url": "https://a.example/", "headers": {"Authorization": {"setting": "STATUS_TOKEN"}}}
    with pytest.raises(SettingsError, match=r"^STATUS_TOKEN: BRIDGE_CHECKS: at /checks/0 .*not set"):
        load(entry, environ={"OTHER": "x"})
    with pytest.raises(SettingsError, match="^STATUS_TOKEN: "):
        load(entry, environ={"STATUS_TOKEN": "   "})


@pytest.mark.parametrize("value", [f"{TOKEN}\nX-Injected: 1", f"{TOKEN}\x00", f"{TOKEN}€"])
def test_a_secret_that_cannot_be_sent_is_refused_at_load_without_showing_it(value):
    """Sending it would fail the whole run, with the value in the traceback: say which setting, never the value."""
    entry = {"name": "c", "url": "https://a.example/", "headers": {"Authorization": {"setting": "STATUS_TOKEN"}}}
    with pytest.raises(SettingsError, match="^STATUS_TOKEN: BRIDGE_CHECKS: at /checks/0 ") as caught:
        load(entry, environ={"STATUS_TOKEN": value})
    assert TOKEN not in str(caught.value)


def test_a_header_value_that_cannot_be_sent_is_refused_at_load():
    with pytest.raises(SettingsError, match="^BRIDGE_CHECKS: at /checks/0/headers/X-Note: "):
        load({"name": "c", "url": "https://a.example/", "headers": {"X-Note": "costs 5 €"}})
    assert load({"name": "c", "url": "https://a.example/", "headers": {"X-Note": "café\tau lait"}})


# --- declarations ----------------------------------------------------------------------------


YAML_CHECKS = """\
checks:
  - name: home
    url: https://status.example.test/health
    method: HEAD
    timeout: 2.5
    status: [200, "3xx"]
    redirects: 0
    tags: {team: web}
  - name: api
    url: http://api.example.test/
"""


def test_checks_from_a_yaml_file_a_json_file_and_inline(tmp_path):
    yaml_path = write(tmp_path / "checks.yaml", YAML_CHECKS)
    import yaml

    document = yaml.safe_load(YAML_CHECKS)
    json_path = write(tmp_path / "checks.json", json.dumps(document))
    loaded = [load_checks(load_settings(env), {}) for env in (
        {"BRIDGE_CHECKS_FILE": yaml_path}, {"BRIDGE_CHECKS_FILE": json_path}, {"BRIDGE_CHECKS": json.dumps(document)})]
    assert loaded[0] == loaded[1] == loaded[2]
    home, api = loaded[0]
    assert (home.name, home.method, home.timeout, home.redirects) == ("home", "HEAD", 2.5, 0)
    assert home.statuses == ((200, 200), (300, 399))
    assert (home.host, home.tags) == ("status.example.test", {"team": "web"})
    assert (api.method, api.statuses, api.timeout) == ("GET", ((200, 299),), 10.0)


def test_no_declaration_means_no_checks():
    assert load_checks(load_settings({}), {}) == []


def test_a_file_and_inline_checks_together_are_refused(tmp_path):
    path = write(tmp_path / "checks.yaml", YAML_CHECKS)
    settings = load_settings({"BRIDGE_CHECKS_FILE": path, "BRIDGE_CHECKS": declared({"name": "a", "url": "http://a/"})})
    with pytest.raises(SettingsError, match="BRIDGE_CHECKS_FILE or BRIDGE_CHECKS, not both"):
        load_checks(settings, {})


@pytest.mark.parametrize("entries, pointer, detail", [
    ([{"name": "a", "url": "ftp://a.example/"}], "/checks/0/url", "does not match"),
    ([{"name": "a", "url": "http://a.example/", "retries": 3}], "/checks/0", "'retries' was unexpected"),
    ([{"name": "a", "url": "http://a/"}, {"name": "a", "url": "http://b/"}], "/checks/1/name", "also used at /checks/0"),
    ([{"name": "a", "url": "http://a/", "status": ["600"]}], "/checks/0/status/0", ""),
    ([{"name": "a", "url": "http://a/", "timeout": 0}], "/checks/0/timeout", ""),
    ([{"name": "a", "url": "http://a/", "assertions": [{"regex": "("}]}], "/checks/0/assertions/0/regex",
     "not a valid regular expression"),
    ([{"name": "a", "url": "http://a/", "assertions": [{"jmespath": "a[", "equals": 1}]}],
     "/checks/0/assertions/0/jmespath", "not a valid JMESPath"),
    ([{"name": "a", "url": "http://a/", "tls": {"ca_file": "missing.pem"}}], "/checks/0/tls/ca_file", "no such file"),
])
def test_schema_errors_name_the_setting_the_file_and_the_field(tmp_path, entries, pointer, detail):
    path = write(tmp_path / "checks.json", declared(*entries))
    with pytest.raises(SettingsError) as caught:
        load_checks(load_settings({"BRIDGE_CHECKS_FILE": path}), {})
    assert str(caught.value).startswith(f"BRIDGE_CHECKS_FILE: {path}: at {pointer}: ")
    assert detail in str(caught.value)


def test_inline_errors_name_the_inline_setting():
    with pytest.raises(SettingsError, match=r"^BRIDGE_CHECKS: at /checks/0: 'url' is a required property"):
        load({"name": "a"})
    with pytest.raises(SettingsError, match="^BRIDGE_CHECKS: not JSON"):
        load_checks(load_settings({"BRIDGE_CHECKS": "{checks: ["}), {})


def test_a_yaml_syntax_error_names_the_setting_and_line(tmp_path):
    path = write(tmp_path / "checks.yaml", "checks:\n  - name: [a\n")
    with pytest.raises(SettingsError, match=f"^BRIDGE_CHECKS_FILE: {re.escape(path)}: YAML syntax error at line"):
        load_checks(load_settings({"BRIDGE_CHECKS_FILE": path}), {})


def test_a_yaml_date_to_compare_is_refused_at_load(tmp_path):
    """YAML reads an unquoted date as a date, which no JSON body can equal: say to quote it."""
    path = write(tmp_path / "checks.yaml", YAML_CHECKS + "    assertions:\n      - jmespath: day\n        equals: 2024-01-01\n")
    with pytest.raises(SettingsError, match=r"at /checks/1/assertions/0/equals: .*quote it"):
        load_checks(load_settings({"BRIDGE_CHECKS_FILE": path}), {})
    write(tmp_path / "checks.yaml", YAML_CHECKS + "    assertions:\n      - jmespath: day\n        equals: '2024-01-01'\n")
    assert load_checks(load_settings({"BRIDGE_CHECKS_FILE": path}), {})[1].assertions


def test_a_bad_checks_file_is_kept_as_the_problem_until_fixed(tmp_path, monkeypatch):
    """Start-up never raises (the functions must still index); the problem names the file and
    field, every use of the Bridge raises it, and a fixed file clears it."""
    path = write(tmp_path / "checks.yaml", "checks:\n  - name: a\n    url: gopher://a/\n")
    monkeypatch.setenv("BRIDGE_CHECKS_FILE", path)
    try:
        assert runtime.start() is None
        assert re.match(f"^BRIDGE_CHECKS_FILE: {re.escape(path)}: at /checks/0/url", str(runtime.problem()))
        with pytest.raises(SettingsError, match="^BRIDGE_CHECKS_FILE: "):
            runtime.bridge()
        monkeypatch.setenv("BRIDGE_CHECKS_FILE", write(tmp_path / "checks.yaml", YAML_CHECKS))
        assert runtime.start().checks_file is not None and runtime.problem() is None
    finally:
        runtime.use(None)


def test_an_unset_secret_is_kept_as_the_problem(monkeypatch):
    monkeypatch.setenv("BRIDGE_CHECKS", declared(
        {"name": "a", "url": "http://a/", "headers": {"Authorization": {"setting": "STATUS_TOKEN"}}}))
    monkeypatch.delenv("STATUS_TOKEN", raising=False)
    try:
        assert runtime.start() is None
        assert str(runtime.problem()).startswith("STATUS_TOKEN: ")
    finally:
        runtime.use(None)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_of_an_http_check(serve):
    server = serve()
    result = run_one(server.url(), tags={"team": "web"})
    metrics = metrics_of([result], "westeurope", 123)
    named = by_name(metrics)
    assert set(named) == {"check_up", "check_duration_seconds", "check_dns_seconds", "check_connect_seconds",
                          "check_first_byte_seconds", "check_status_code", "check_response_bytes"}
    assert named["check_up"].point.value == 1
    assert named["check_status_code"].point.value == 200
    assert named["check_response_bytes"].point.value == len(b"hello from the service")
    assert named["check_duration_seconds"].point.value > 0
    assert named["check_duration_seconds"].unit == "s"
    expected_tags = {"check": "c", "host": "127.0.0.1", "location": "westeurope", "team": "web"}
    assert all(metric.tag_dict() == expected_tags for metric in metrics)
    assert all(metric.time_ns == 123 for metric in metrics)


def test_metrics_of_an_https_check_include_the_handshake_and_certificate(https, ca):
    server = https(not_after=now() + timedelta(days=90))
    named = by_name(metrics_of([run_one(server.url(), tls={"ca_file": ca.path})], "local", 0))
    assert named["check_tls_seconds"].point.value > 0
    assert named["check_certificate_days_left"].point.value == pytest.approx(90, abs=0.1)
    assert named["check_certificate_days_left"].unit == "d"


def test_metrics_of_a_failed_check_tag_the_reason_on_check_up_only():
    result = run_one(refused_url(), timeout=5)
    metrics = metrics_of([result], "local", 0)
    named = by_name(metrics)
    assert named["check_up"].point.value == 0
    assert named["check_up"].tag_dict()["reason"] == "connect"
    assert "check_status_code" not in named and "check_response_bytes" not in named
    assert all("reason" not in m.tag_dict() for m in metrics if m.name != "check_up")


def test_the_bridges_own_tags_win_over_the_checks(serve):
    result = run_one(serve().url(), tags={"check": "spoof", "host": "spoof", "location": "spoof", "reason": "spoof",
                                         "env": "prod"})
    for metric in metrics_of([result], "here", 0):
        assert metric.tag_dict() == {"check": "c", "host": "127.0.0.1", "location": "here", "env": "prod"}
    down = run_one(refused_url(), timeout=5, tags={"reason": "spoof"})
    assert by_name(metrics_of([down], "here", 0))["check_up"].tag_dict()["reason"] == "connect"


@pytest.mark.parametrize("environ, location", [
    ({"BRIDGE_LOCATION": "probe-eu", "REGION_NAME": "West Europe"}, "probe-eu"),
    ({"REGION_NAME": "West Europe"}, "West Europe"),
    ({}, "local"),
])
def test_the_location_tag(serve, settings_env, monkeypatch, environ, location):
    monkeypatch.delenv("REGION_NAME", raising=False)
    bridge = use_bridge({**settings_env, **environ, "BRIDGE_CHECKS": declared({"name": "c", "url": serve().url()})})
    _, metrics = bridge.run_checks(deliver=False)
    assert {m.tag_dict()["location"] for m in metrics} == {location}


def test_the_bridge_delivers_check_metrics_to_the_outbox(serve, settings_env):
    server = serve()
    bridge = use_bridge({**settings_env, "BRIDGE_CHECKS": declared(
        {"name": "home", "url": server.url()}, {"name": "gone", "url": refused_url(), "timeout": 5})})
    results, _ = bridge.run_checks()
    assert [r.up for r in results] == [True, False]
    assert outbox_lines(bridge) == []  # queued: the delivery function writes the outbox
    drain(bridge)
    ups = {line["tags"]["check"]: line for line in outbox_lines(bridge) if line["name"] == "check_up"}
    assert {name: line["gauge"]["value"] for name, line in ups.items()} == {"home": 1, "gone": 0}
    assert ups["gone"]["tags"]["reason"] == "connect"


def test_run_checks_by_name_and_without_delivery(serve, settings_env):
    server = serve()
    bridge = use_bridge({**settings_env, "BRIDGE_CHECKS": declared(
        {"name": "a", "url": server.url()}, {"name": "b", "url": server.url("/json")})})
    results, metrics = bridge.run_checks(["b"], deliver=False)
    assert [r.check.name for r in results] == ["b"]
    assert {m.tag_dict()["check"] for m in metrics} == {"b"}
    assert outbox_lines(bridge) == []
    with pytest.raises(SettingsError, match="no check named 'zzz'; declared: a, b"):
        bridge.run_checks(["zzz"])


# --- command line ----------------------------------------------------------------------------


def cli(monkeypatch, capsys, argv: list[str], **env: str) -> tuple[int, str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def split_output(out: str) -> tuple[list[str], list[dict]]:
    """The table's lines, and the NDJSON metrics after the blank line."""
    text, _, ndjson = out.partition("\n\n")
    return text.splitlines(), [json.loads(line) for line in ndjson.splitlines()]


def test_cli_check_all_up(serve, monkeypatch, capsys):
    server = serve()
    checks = declared({"name": "home", "url": server.url()}, {"name": "api", "url": server.url("/json")})
    code, out, _ = cli(monkeypatch, capsys, ["check"], BRIDGE_CHECKS=checks)
    assert code == 0
    rows, metrics = split_output(out)
    assert rows[0].split()[:4] == ["CHECK", "UP", "REASON", "STATUS"]
    assert [row.split()[:4] for row in rows[1:]] == [["home", "up", "-", "200"], ["api", "up", "-", "200"]]
    assert {(m["tags"]["check"], m["gauge"]["value"]) for m in metrics if m["name"] == "check_up"} == {
        ("home", 1), ("api", 1)}


def test_cli_check_one_down(serve, monkeypatch, capsys):
    server = serve({"/broken": (500, {}, b"")})
    checks = declared({"name": "home", "url": server.url()}, {"name": "broken", "url": server.url("/broken")})
    code, out, _ = cli(monkeypatch, capsys, ["check"], BRIDGE_CHECKS=checks)
    assert code == 1
    rows, metrics = split_output(out)
    assert rows[2].split()[:4] == ["broken", "DOWN", "status", "500"]
    assert "status 500, expected 200-299" in rows[2]
    assert any(m["name"] == "check_up" and m["tags"] == {"check": "broken", "host": "127.0.0.1",
                                                         "location": "local", "reason": "status"} for m in metrics)


def test_cli_check_by_name(serve, monkeypatch, capsys):
    server = serve({"/broken": (500, {}, b"")})
    checks = declared({"name": "home", "url": server.url()}, {"name": "broken", "url": server.url("/broken")})
    code, out, _ = cli(monkeypatch, capsys, ["check", "--name", "home"], BRIDGE_CHECKS=checks)
    assert code == 0
    rows, metrics = split_output(out)
    assert len(rows) == 2 and rows[1].startswith("home")
    assert {m["tags"]["check"] for m in metrics} == {"home"}
    assert [r.path for r in server.received] == ["/"]


def test_cli_check_unknown_name(monkeypatch, capsys):
    checks = declared({"name": "home", "url": "http://127.0.0.1:9/"})
    code, out, err = cli(monkeypatch, capsys, ["check", "--name", "nope"], BRIDGE_CHECKS=checks)
    assert code == 2
    assert out == ""
    assert "no check named 'nope'" in err and "home" in err


def test_cli_check_without_checks(monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, ["check"])
    assert code == 2
    assert "no checks are declared" in err and "BRIDGE_CHECKS_FILE" in err


def test_cli_check_with_a_bad_file(tmp_path, monkeypatch, capsys):
    path = write(tmp_path / "checks.yaml", "checks:\n  - name: a\n")
    code, out, err = cli(monkeypatch, capsys, ["check"], BRIDGE_CHECKS_FILE=path)
    assert code == 2
    assert f"BRIDGE_CHECKS_FILE: {path}: at /checks/0: 'url' is a required property" in err
    code, _, err = cli(monkeypatch, capsys, ["check"], BRIDGE_CHECKS_FILE=str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "BRIDGE_CHECKS_FILE" in err


def test_cli_check_send_delivers(serve, settings_env, monkeypatch, capsys):
    server = serve()
    code, _, _ = cli(monkeypatch, capsys, ["check", "--send"], BRIDGE_CHECKS=declared({"name": "home", "url": server.url()}),
                     **settings_env)
    assert code == 0
    bridge = use_bridge(settings_env)
    assert [line["tags"]["check"] for line in outbox_lines(bridge) if line["name"] == "check_up"] == ["home"]

