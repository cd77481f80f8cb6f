"""Real unleash-server peers for tests: each fixture runs its own PostgreSQL and Unleash.

Fixtures (session-scoped):
    unleash_7 -> UnleashPeer for unleash-server 7.5.1 (has POST /api/client/metrics/custom,
                 experimental flag customMetrics on)
    unleash_8 -> UnleashPeer for unleash-server 8.2.0 (impact metrics on POST /api/client/metrics)

tests/conftest.py registers them (``pytest_plugins``): a test just names the fixture.
``parse_prometheus`` reads what the servers expose as Prometheus text.

Everything listens on 127.0.0.1 only. The servers are installed by
`bash scripts/install-peers.sh` into .peers/unleash-<version>/. If a peer cannot be started
the fixture skips (or fails when CI=true).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from peers import NO_PROXY_OPENER, PeerUnavailable, free_port, log_tail, serve_peer

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = ROOT / ".peers"
START_SCRIPT = Path(__file__).resolve().parent / "start-unleash.js"

HOST = "127.0.0.1"
# Known test tokens. Backend tokens are <project>:<environment>.<secret>, admin tokens *:*.<secret>.
CLIENT_TOKEN = "default:development.bridge-peer-client-token"
ADMIN_TOKEN = "*:*.bridge-peer-admin-token"

PG_START_TIMEOUT = 30.0
UNLEASH_START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0

# Never route loopback traffic through a proxy from the environment.


@dataclass
class UnleashPeer:
    """A running unleash-server. `url` has no trailing slash."""

    url: str
    client_token: str
    admin_token: str
    version: str
    port: int = 0
    pg_port: int = 0
    log_path: str = ""

    def loglog_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


# ----------------------------------------------------------------------------- helpers


def _find_pg_bin() -> Path:
    """Directory holding initdb, pg_ctl and psql (the real PostgreSQL bin dir)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        real = Path(os.path.realpath(initdb)).parent
        if (real / "pg_ctl").exists() and (real / "psql").exists():
            return real

    def version_key(p: str):
        try:
            return float(Path(p).parent.name)
        except ValueError:
            return 0.0

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True):
        b = Path(bindir)
        if (b / "initdb").exists() and (b / "pg_ctl").exists():
            return b
    raise PeerUnavailable("PostgreSQL (initdb/pg_ctl) not found")


def _http_get(url: str, timeout: float = 2.0) -> int:
    req = urllib.request.Request(url, method="GET")
    try:
        with NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class _Postgres:
    """A throwaway PostgreSQL cluster in its own temp dir, listening on 127.0.0.1."""

    bindir: Path
    workdir: Path
    port: int = 0
    _as_postgres: bool = False
    _started: bool = False
    env: dict = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.workdir / "postgres.log"

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self._as_postgres:
            kwargs.update(user="postgres", group="postgres", extra_groups=[])
        return subprocess.run(
            args,
            cwd=str(self.workdir),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PeerUnavailable(
                    "running as root but there is no 'postgres' OS user for initdb"
                ) from exc
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
            self._as_postgres = True
        self.env = {
            "PATH": f"{self.bindir}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.workdir),
            "PGTZ": "UTC",
        }
        cp = self._run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.datadir),
                "-U", "postgres",
                "--auth=trust",
                "-E", "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=PG_START_TIMEOUT,
        )
        if cp.returncode != 0:
            raise PeerUnavailable(f"initdb failed (exit {cp.returncode}): {cp.stdout[-1500:]}")
        self.port = free_port()
        opts = (
            f"-c listen_addresses={HOST} -p {self.port} -k {self.workdir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        cp = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D", str(self.datadir),
                "-o", opts,
                "-l", str(self.logfile),
                "-t", str(int(PG_START_TIMEOUT)),
                "-w",
                "start",
            ],
            timeout=PG_START_TIMEOUT + 5,
        )
        if cp.returncode != 0:
            raise PeerUnavailable(
                f"pg_ctl start failed (exit {cp.returncode}): {cp.stdout[-800:]}\n"
                f"{log_tail(str(self.logfile), 20)}"
            )
        self._started = True
        cp = self._run(
            [
                str(self.bindir / "psql"),
                "-h", HOST,
                "-p", str(self.port),
                "-U", "postgres",
                "-d", "postgres",
                "-v", "ON_ERROR_STOP=1",
                "-q",
                "-c", "CREATE USER unleash WITH PASSWORD 'unleash'",
                "-c", "CREATE DATABASE unleash OWNER unleash",
            ],
            timeout=PG_START_TIMEOUT,
        )
        if cp.returncode != 0:
            raise PeerUnavailable(f"creating the unleash user/database failed: {cp.stdout[-800:]}")

    @property
    def database_url(self) -> str:
        return f"postgres://unleash:unleash@{HOST}:{self.port}/unleash"

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
                timeout=STOP_TIMEOUT + 5,
            )
        except subprocess.TimeoutExpired:
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop"],
                timeout=STOP_TIMEOUT,
            )


class _UnleashProcess:
    def __init__(self, version: str, workdir: Path, database_url: str):
        self.version = version
        self.workdir = workdir
        self.database_url = database_url
        self.install_dir = PEERS_DIR / f"unleash-{version}"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"unleash-{version}.log"

    def check_installed(self) -> str:
        """Path of `node`; raises PeerUnavailable if node or this unleash-server is missing."""
        pkg = self.install_dir / "node_modules" / "unleash-server" / "package.json"
        if not pkg.exists():
            raise PeerUnavailable(f"unleash-server {self.version} is not installed in {self.install_dir}")
        node = shutil.which("node")
        if not node:
            raise PeerUnavailable("node is not on PATH")
        return node

    def start(self) -> None:
        node = self.check_installed()
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.lower().endswith("_proxy") and not k.startswith(("DATABASE_", "INIT_", "UNLEASH_"))
        }
        env.update(
            DATABASE_URL=self.database_url,
            DATABASE_SSL="false",
            INIT_BACKEND_API_TOKENS=CLIENT_TOKEN,
            INIT_CLIENT_API_TOKENS=CLIENT_TOKEN,
            INIT_ADMIN_API_TOKENS=ADMIN_TOKEN,
            UNLEASH_URL=f"http://{HOST}:{self.port}",
            CHECK_VERSION="false",
            SEND_TELEMETRY="false",
            LOG_LEVEL=os.environ.get("UNLEASH_PEER_LOG_LEVEL", "warn"),
            NODE_ENV="production",
        )
        args = [node, str(START_SCRIPT), str(self.install_dir), str(self.port)]
        if self.version.startswith("7."):
            args.append("customMetrics")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=str(self.workdir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + UNLEASH_START_TIMEOUT
        health = f"http://{HOST}:{self.port}/health"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise PeerUnavailable(
                    f"unleash-server {self.version} exited with code {rc} during start:\n"
                    f"{log_tail(str(self.log_path))}"
                )
            try:
                if _http_get(health, timeout=1.0) == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise PeerUnavailable(
                    f"unleash-server {self.version} did not answer {health} within "
                    f"{UNLEASH_START_TIMEOUT:.0f} s:\n{log_tail(str(self.log_path))}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            pass
        # Any children left in the process group (there should be none).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_unleash(version: str):
    """Generator: start PostgreSQL + unleash-server `version`, yield an UnleashPeer, clean up.

    Raises PeerUnavailable (before the first yield) when the peer cannot be started.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"unleash-peer-{version}-"))
    pg: _Postgres | None = None
    server: _UnleashProcess | None = None
    try:
        server = _UnleashProcess(version, workdir, database_url="")
        server.check_installed()  # cheap checks first
        pg = _Postgres(bindir=_find_pg_bin(), workdir=workdir)
        pg.start()
        server.database_url = pg.database_url
        server.start()
        yield UnleashPeer(
            url=f"http://{HOST}:{server.port}",
            client_token=CLIENT_TOKEN,
            admin_token=ADMIN_TOKEN,
            version=version,
            port=server.port,
            pg_port=pg.port,
            log_path=str(server.log_path),
        )
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _peer_fixture(version: str):
    yield from serve_peer(lambda: run_unleash(version), f"unleash-server {version} peer")


@pytest.fixture(scope="session")
def unleash_7():
    """unleash-server 7.5.1 with the custom metrics endpoint (experimental customMetrics on)."""
    yield from _peer_fixture("7.5.1")


@pytest.fixture(scope="session")
def unleash_8():
    """unleash-server 8.2.0 (impact metrics; the custom endpoint is gone)."""
    yield from _peer_fixture("8.2.0")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text exposition -> {(sample name, frozenset(label items)): value}."""
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparseable exposition line: {line!r}"
        name, labels, value = m.groups()
        out[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return out
