#!/usr/bin/env bash
# Creates .venv and installs facekp with its pinned dependencies (about 3 GB; a few minutes).
# Sourced by run.sh and test.sh; a second run only checks that the install is current.
# Python 3.9, 3.10, 3.11 or 3.12 (TensorFlow 2.19 and MediaPipe 0.10.21, the newest releases that
# install together, have wheels for no other): PYTHON=python3.12 ./run.sh picks one.
# A .venv that a failed or killed setup left half-made is removed and built again.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
creating="$venv/.facekp-creating"
stamp="$venv/.facekp-installed"

setup_fail() {
  echo "[setup] error: $*" >&2
  return 1 2>/dev/null || exit 1
}

check_python() {
  local version
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    setup_fail "$python does not run: install Python 3.9-3.12 or name one, e.g." \
      "PYTHON=python3.12 ./run.sh"
  case "$version" in
    3.9|3.10|3.11|3.12) ;;
    *) setup_fail "$python is Python $version; facekp's pinned TensorFlow 2.19 and MediaPipe" \
         "0.10.21 install on Python 3.9, 3.10, 3.11 or 3.12 only: run with" \
         "PYTHON=python3.12 (or 3.9-3.11)" ;;
  esac
}

if [ -e "$creating" ]; then
  echo "[setup] removing the half-made $venv of an interrupted setup"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  check_python
  echo "[setup] creating $venv with $("$python" --version)"
  trap 'rm -rf "$venv"; echo "[setup] failed: removed the half-made $venv" >&2' EXIT
  "$python" -m venv "$venv"
  touch "$creating"
fi
if [ ! -f "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ]; then
  echo "[setup] installing facekp and its pinned dependencies (first time: a few minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[test]"
  touch "$stamp"
fi
rm -f "$creating"
trap - EXIT
export PATH="$venv/bin:$PATH"
