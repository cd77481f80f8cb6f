#!/usr/bin/env bash
# Install Azurite (the Azure Storage emulator) for the queue tests in tests/peers/azurite.py.
# Idempotent: a fast no-op when the pinned version is already installed.
#   npm azurite@3.35.0 into .peers/azurite/  (3.36+ needs Node 22; this machine has Node 20)
# Usage: bash scripts/install-azurite.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.peers/azurite"
VERSION="3.35.0"

say() { printf 'install-azurite: %s\n' "$*"; }
die() { printf 'install-azurite: ERROR: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node not found (need Node.js >= 20)"
command -v npm >/dev/null 2>&1 || die "npm not found"

installed_version() {  # prints the installed azurite version, or nothing
    local pkg="$DIR/node_modules/azurite/package.json"
    [ -f "$pkg" ] || return 0
    node -e 'try{process.stdout.write(require(process.argv[1]).version||"")}catch(e){}' "$pkg"
}

if [ -f "$DIR/.installed" ] && [ "$(installed_version)" = "$VERSION" ] \
        && [ -x "$DIR/node_modules/.bin/azurite-queue" ]; then
    say "azurite $VERSION: ok ($DIR)"
    exit 0
fi

say "azurite $VERSION: installing into $DIR ..."
mkdir -p "$DIR"
rm -f "$DIR/.installed"
# A private package.json keeps npm from walking up to another project.
[ -f "$DIR/package.json" ] || printf '{"name":"peer-azurite","private":true}\n' >"$DIR/package.json"
log="$DIR/npm-install.log"
if ! npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error --omit=dev \
        "azurite@$VERSION" >"$log" 2>&1; then
    tail -n 20 "$log" >&2 || true
    die "npm install azurite@$VERSION failed (log: $log)"
fi
got="$(installed_version)"
[ "$got" = "$VERSION" ] || die "after install found azurite version '${got:-none}' in $DIR"
[ -x "$DIR/node_modules/.bin/azurite-queue" ] || die "azurite-queue missing from $DIR/node_modules/.bin"
touch "$DIR/.installed"
say "azurite $VERSION: installed"
