#!/usr/bin/env bash
# Build the wheel from a copy of the sources (the files the Dockerfile copies), install it in a
# clean virtual environment (no access to the source tree) and prove the agent starts:
#   - `otel-kepler components` lists every component type pyproject.toml declares;
#   - `otel-kepler validate` accepts every config in configs/;
#   - `otel-kepler run` with configs/local.yaml on a free port answers /readyz (ready once a
#     tick with node energy is exported; waited for up to READY_TIMEOUT seconds), serves
#     kepler_node_cpu_joules_total on /metrics, prints its console lines, and exits 0 within
#     10 s of SIGTERM.
# Dependencies come at the versions of requirements/constraints.txt, as in the image.
# Usage: scripts/check-wheel.sh   (PYTHON=python3.11 to choose the interpreter,
#        READY_TIMEOUT=60 to wait longer on a slow machine)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
READY_TIMEOUT=${READY_TIMEOUT:-30}
PIP_QUIET=(--quiet --quiet --disable-pip-version-check)
WORK=$(mktemp -d -t otel-kepler-wheel.XXXXXX)
AGENT_PID=""
cleanup() {
    if [[ -n "$AGENT_PID" ]] && kill -0 "$AGENT_PID" 2>/dev/null; then
        kill "$AGENT_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '== %s\n' "$*"; }
fail() { printf 'check-wheel: FAILED: %s\n' "$*" >&2; exit 1; }

step "copy the sources the wheel is built from"
mkdir -p "$WORK/src"
for path in pyproject.toml README.md LICENSE otel_kepler receivers processors exporters; do
    cp -r "$ROOT/$path" "$WORK/src/"
done
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +

step "build the wheel"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install "${PIP_QUIET[@]}" --upgrade pip
"$WORK/build-venv/bin/pip" wheel "${PIP_QUIET[@]}" --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
wheel=$(ls "$WORK"/dist/otel_kepler-*.whl)
echo "$(basename "$wheel")"

step "install it in a clean virtual environment"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install "${PIP_QUIET[@]}" --upgrade pip
"$WORK/venv/bin/pip" install "${PIP_QUIET[@]}" --constraint "$ROOT/requirements/constraints.txt" "$wheel"
PY="$WORK/venv/bin/python"
BIN="$WORK/venv/bin/otel-kepler"
cd "$WORK"  # nothing may come from the source tree
unset PYTHONPATH
location=$("$PY" -c 'import otel_kepler, os; print(os.path.dirname(otel_kepler.__file__))')
[[ "$location" == "$WORK/venv/"* ]] || fail "otel_kepler imported from $location, not the wheel"

step "otel-kepler components: every type pyproject.toml declares"
"$BIN" components | tee "$WORK/components.txt"
"$PY" - "$ROOT/pyproject.toml" "$WORK/components.txt" <<'EOF'
import sys, tomllib
declared = tomllib.load(open(sys.argv[1], "rb"))["project"]["entry-points"]
listed, kind = {}, None
for line in open(sys.argv[2]):
    if line.rstrip().endswith(":") and not line.startswith(" "):
        kind = line.strip().rstrip(":")
    elif line.strip():
        listed.setdefault(kind, set()).add(line.split()[0])
missing = [
    f"{group.split('.')[-1]}/{name}"
    for group, entries in declared.items()
    for name in entries
    if name not in listed.get(group.split(".")[-1], set())
]
if missing:
    sys.exit(f"declared but not listed by the installed wheel: {', '.join(missing)}")
EOF

step "otel-kepler validate: every config in configs/"
for config in "$ROOT"/configs/*.yaml; do
    NODE_NAME=wheel-check "$BIN" validate --config "$config" || fail "validate $config"
done

step "otel-kepler run: configs/local.yaml on a free port"
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s/127\.0\.0\.1:9102/127.0.0.1:$port/" -e "s/interval: 5s/interval: 1s/" \
    "$ROOT/configs/local.yaml" > "$WORK/local.yaml"
grep -q "127.0.0.1:$port" "$WORK/local.yaml" || fail "configs/local.yaml has no 127.0.0.1:9102 endpoint"
"$BIN" run --config "$WORK/local.yaml" > "$WORK/agent.out" 2> "$WORK/agent.err" &
AGENT_PID=$!
agent_log() { echo "--- the agent's stderr (last 20 lines):" >&2; tail -n 20 "$WORK/agent.err" >&2; }
echo "waiting for http://127.0.0.1:$port/readyz (up to ${READY_TIMEOUT}s)"
"$PY" - "$port" "$READY_TIMEOUT" "$AGENT_PID" <<'EOF' || { agent_log; fail "the agent did not become ready and serve its metrics"; }
import os, sys, time, urllib.error, urllib.request
base, timeout, pid = f"http://127.0.0.1:{sys.argv[1]}", float(sys.argv[2]), int(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
start = time.monotonic()
last = "no answer"
while True:
    try:
        with opener.open(base + "/readyz", timeout=2) as answer:
            if answer.status == 200:
                break
    except urllib.error.HTTPError as err:
        last = f"{err.code} {err.read().decode(errors='replace').strip()}"
    except OSError as err:
        last = f"no answer ({err})"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"the agent exited before /readyz answered 200 (last answer: {last})")
    if time.monotonic() - start > timeout:
        sys.exit(f"/readyz did not answer 200 within {timeout:g} s (last answer: {last})")
    time.sleep(0.2)
print(f"ready after {time.monotonic() - start:.1f} s")
with opener.open(base + "/healthz", timeout=2) as answer:
    if answer.status != 200:
        sys.exit(f"/healthz answered {answer.status}")
with opener.open(base + "/metrics", timeout=5) as answer:
    body = answer.read().decode()
samples = [line for line in body.splitlines() if line.startswith("kepler_node_cpu_joules_total{")]
if not samples:
    sys.exit("ready, but no kepler_node_cpu_joules_total on /metrics")
print("\n".join(samples))
EOF
kill -TERM "$AGENT_PID"
for _ in $(seq 100); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$AGENT_PID" 2>/dev/null; then agent_log; fail "the agent did not stop within 10 s of SIGTERM"; fi
rc=0
wait "$AGENT_PID" || rc=$?
AGENT_PID=""
[[ $rc -eq 0 ]] || { agent_log; fail "otel-kepler run exited $rc after SIGTERM"; }
grep -q " node: " "$WORK/agent.out" || { agent_log; fail "the debug exporter printed no node line"; }

echo "check-wheel: OK: $(basename "$wheel") installs in a clean virtual environment and starts"
