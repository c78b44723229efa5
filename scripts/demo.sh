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
if [[ ! -f "$EIS_INSTANCE_PATH/config.py" ]]; then
  # A per-deployment secret and encryption key, made once and kept out of git.
  .venv/bin/python - "$EIS_INSTANCE_PATH/config.py" <<'PY'
import secrets, sys
from cryptography.fernet import Fernet
with open(sys.argv[1], "w") as f:
    f.write(f"SECRET_KEY = {secrets.token_hex(32)!r}\nEIS_ENCRYPTION_KEYS = {Fernet.generate_key().decode()!r}\n")
PY
  echo "==> wrote $EIS_INSTANCE_PATH/config.py (SECRET_KEY, EIS_ENCRYPTION_KEYS)"
fi
exec .venv/bin/python scripts/demo.py "$@"
