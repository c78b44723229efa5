#!/usr/bin/env bash
# Install what the tests and the demo need, then the project into .venv.  Safe to re-run.
#   system: dovecot-imapd dovecot-submissiond redis-server chromium openssl (apt, as root), and
#           postgresql's server binaries (the fault test starts a cluster of its own)
#   python: .venv in the repo root with `pip install -e '.[test]'`
#   npm:    tests/js (axe-core, which the browser tests inject for WCAG checks)
# PYTHON=python3.12 scripts/install-deps.sh picks the interpreter for a new .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
APT_PACKAGES=(dovecot-imapd dovecot-submissiond redis-server chromium openssl)
LOG="$(mktemp -t eis-install-deps.XXXXXX)"
trap 'rm -f "$LOG"' EXIT

step() { printf '==> %s\n' "$*"; }

# Run a command with its output in $LOG; show the tail only if it fails.
quiet() {
    if ! "$@" >"$LOG" 2>&1; then
        printf 'FAILED: %s\n' "$*" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

have() {
    # dovecot lives in /usr/sbin, which not every PATH has
    PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1
}

missing=()
for cmd in dovecot redis-server chromium openssl npm; do
    have "$cmd" || missing+=("$cmd")
done
have npm || APT_PACKAGES+=(nodejs npm)  # a machine with Node.js from elsewhere keeps its own
# tests/test_fleet_faults.py restarts a PostgreSQL of its own (devservers/postgres.py)
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! have initdb; then
    missing+=(initdb)
    APT_PACKAGES+=(postgresql)
fi
# dovecot-core alone gives the `dovecot` command but no IMAP or submission service
for helper in /usr/lib/dovecot/imap /usr/lib/dovecot/submission; do
    [[ -x "$helper" ]] || missing+=("$helper")
done

if ((${#missing[@]})); then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "missing: ${missing[*]}" >&2
        echo "install as root: apt-get update && apt-get install -y --no-install-recommends ${APT_PACKAGES[*]}" >&2
        exit 1
    fi
    step "apt-get update (missing: ${missing[*]})"
    quiet apt-get update -qq
    step "apt-get install ${APT_PACKAGES[*]}"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
else
    step "system packages present (dovecot, redis-server, chromium, openssl, npm)"
fi

VENV="$ROOT/.venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    step "create $VENV with $("$PYTHON" --version 2>&1)"
    quiet "$PYTHON" -m venv "$VENV"
else
    step "virtualenv $VENV present"
fi

step "pip install -e '.[test]' into .venv"
quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$ROOT[test]"

if [[ ! -f "$ROOT/tests/js/node_modules/axe-core/axe.min.js" ]]; then
    step "npm ci in tests/js (axe-core)"
    quiet npm ci --prefix "$ROOT/tests/js" --no-audit --no-fund
else
    step "tests/js present (axe-core)"
fi

step "done"
