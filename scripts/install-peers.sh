#!/usr/bin/env bash
# Install the real peer servers used by tests/peers (idempotent, fast when already installed).
#   - PostgreSQL (Debian package `postgresql`) if initdb/pg_ctl are not available
#   - unleash-server 7.5.1 and 8.2.0 from npm, each into .peers/unleash-<version>/
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

# ---------------------------------------------------------------- unleash-server
command -v node >/dev/null 2>&1 || die "node not found (need Node.js >= 20)"
command -v npm >/dev/null 2>&1 || die "npm not found"

installed_version() {  # prints the installed unleash-server version in $1, or nothing
    local pkg="$1/node_modules/unleash-server/package.json"
    [ -f "$pkg" ] || return 0
    node -e 'try{process.stdout.write(require(process.argv[1]).version||"")}catch(e){}' "$pkg"
}

for v in "${UNLEASH_VERSIONS[@]}"; do
    dir="$PEERS/unleash-$v"
    if [ "$(installed_version "$dir")" = "$v" ] && [ -f "$dir/.installed" ]; then
        say "unleash-server $v: ok ($dir)"
        continue
    fi
    say "unleash-server $v: installing into $dir (about 35 s) ..."
    mkdir -p "$dir"
    rm -f "$dir/.installed"
    # A private package.json keeps npm from walking up to another project.
    [ -f "$dir/package.json" ] || printf '{"name":"peer-unleash-%s","private":true}\n' "${v//./-}" >"$dir/package.json"
    log="$dir/npm-install.log"
    if ! npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --omit=dev \
            --engine-strict=false "unleash-server@$v" >"$log" 2>&1; then
        tail -n 20 "$log" >&2 || true
        die "npm install unleash-server@$v failed (log: $log)"
    fi
    got="$(installed_version "$dir")"
    [ "$got" = "$v" ] || die "unleash-server $v: after install found version '${got:-none}' in $dir"
    touch "$dir/.installed"
    say "unleash-server $v: installed"
done

# Azurite (the storage-queue emulator) has an installer of its own.
bash "$ROOT/scripts/install-azurite.sh"
say "done"
