#!/usr/bin/env bash
# Sets up .venv and runs the test suite: ./test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_env.sh
exec python -m pytest tests/ "$@"
