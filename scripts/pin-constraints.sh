#!/usr/bin/env bash
# Pin requirements/constraints.txt to the versions the runtime dependencies resolve to today:
# install the project (runtime dependencies only) in a throwaway virtual environment and write
# what pip chose. `make run`, `make test` and the image install through this file, so every
# install gets the same versions until it is pinned again (`make constraints`).
# Usage: scripts/pin-constraints.sh   (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT="$ROOT/requirements/constraints.txt"
WORK=$(mktemp -d -t otel-kepler-pin.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --quiet --disable-pip-version-check --no-compile "$ROOT"
version=$("$WORK/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
{
    echo "# The runtime dependencies of otel-kepler, pinned as they resolved on Python $version."
    echo "# Installs take versions from here (pip --constraint); scripts/pin-constraints.sh"
    echo "# (make constraints) writes this file again."
    "$WORK/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude otel-kepler
} > "$OUT.new"
mv "$OUT.new" "$OUT"
echo "pinned $(grep -c '==' "$OUT") packages in ${OUT#"$ROOT/"}"
