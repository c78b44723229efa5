#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages when run as root, the
# virtualenv), then runs the whole suite on SQLite and PostgreSQL.
#   EIS_TEST_DATABASES=sqlite ./scripts/test.sh     only SQLite
#   EIS_TEST_PG_URL=postgresql+psycopg://user@host:5432/postgres   another PostgreSQL
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
exec .venv/bin/python -m pytest "$@"
