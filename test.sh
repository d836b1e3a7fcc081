#!/usr/bin/env bash
# Sets up .venv and runs the test suite in two processes (pytest-xdist; each test file runs whole
# in one of them, so its module fixtures are built once): ./test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_env.sh
exec python -m pytest tests/ -n 2 --dist loadfile "$@"
