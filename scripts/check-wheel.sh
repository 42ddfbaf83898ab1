#!/usr/bin/env bash
# Build the wheel from a copy of the sources (the files the Dockerfile copies), install it in a
# clean virtual environment (no access to the source tree) and prove the agent starts:
#   - `otel-kepler components` lists every component type pyproject.toml declares;
#   - `otel-kepler validate` accepts every config in configs/;
#   - `otel-kepler run --duration` with configs/local.yaml on a free port answers /readyz and
#     serves kepler_node_cpu_joules_total on /metrics, then exits 0.
# Usage: scripts/check-wheel.sh   (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
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
for path in pyproject.toml README.md otel_kepler receivers processors exporters; do
    cp -r "$ROOT/$path" "$WORK/src/"
done
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +

step "build the wheel"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install --quiet --upgrade pip
"$WORK/build-venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
wheel=$(ls "$WORK"/dist/otel_kepler-*.whl)
echo "$(basename "$wheel")"

step "install it in a clean virtual environment"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --upgrade pip
"$WORK/venv/bin/pip" install --quiet "$wheel"
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

step "otel-kepler run --duration: configs/local.yaml on a free port"
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s/127\.0\.0\.1:9102/127.0.0.1:$port/" -e "s/interval: 5s/interval: 1s/" \
    "$ROOT/configs/local.yaml" > "$WORK/local.yaml"
grep -q "127.0.0.1:$port" "$WORK/local.yaml" || fail "configs/local.yaml has no 127.0.0.1:9102 endpoint"
"$BIN" run --config "$WORK/local.yaml" --duration 6s > "$WORK/agent.out" 2> "$WORK/agent.err" &
AGENT_PID=$!
"$PY" - "$port" <<'EOF' || { cat "$WORK/agent.err" >&2; fail "the agent did not serve its metrics"; }
import sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + 20
while True:
    try:
        if opener.open(base + "/readyz", timeout=2).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("/readyz never answered 200")
    time.sleep(0.2)
assert opener.open(base + "/healthz", timeout=2).status == 200
body = opener.open(base + "/metrics", timeout=5).read().decode()
samples = [line for line in body.splitlines() if line.startswith("kepler_node_cpu_joules_total{")]
if not samples:
    sys.exit("no kepler_node_cpu_joules_total on /metrics")
print("\n".join(samples))
EOF
rc=0
wait "$AGENT_PID" || rc=$?
AGENT_PID=""
[[ $rc -eq 0 ]] || { cat "$WORK/agent.err" >&2; fail "otel-kepler run exited $rc"; }
grep -q " node: " "$WORK/agent.out" || fail "the debug exporter printed no node line"

echo "check-wheel: OK: $(basename "$wheel") installs in a clean virtual environment and starts"
