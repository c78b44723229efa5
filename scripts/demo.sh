#!/usr/bin/env bash
# The run command: installs what is missing (Debian packages when run as root, the
# virtualenv), then runs the portal and a worker on SQLite and an embedded Redis, with a
# demo sales team whose mailboxes on a local Dovecot are synced for real. Ctrl-C stops it.
#   EIS_DEMO_PORT=8000 ./scripts/demo.sh      another port
#   EIS_INSTANCE_PATH=/tmp/eis ./scripts/demo.sh    keep the demo's files elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export EIS_INSTANCE_PATH="${EIS_INSTANCE_PATH:-$PWD/instance}"
mkdir -p "$EIS_INSTANCE_PATH"
exec .venv/bin/python scripts/demo.py "$@"
