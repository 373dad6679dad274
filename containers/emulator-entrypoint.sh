#!/bin/sh
# Maps kvlab's engine-image contract to `kvlab serve` (the emulated engine):
# /etc/kvlab/engine.env -> tier, model, GPU type, Redis URL. The emulator binds loopback; on a
# bridge network socat publishes it on KVLAB_HOST:KVLAB_PORT, on the host network it listens there.
set -eu
ENV_FILE=${KVLAB_ENGINE_ENV:-/etc/kvlab/engine.env}
if [ ! -r "$ENV_FILE" ]; then
  echo "kvlab-engine: $ENV_FILE is missing; run this image with the kvlab launcher (--engine docker)" >&2
  exit 2
fi
. "$ENV_FILE"
set -- serve --tier "${KVLAB_TIER:-cpu}" --model "${KVLAB_MODEL:-tiny}"
if [ -n "${KVLAB_GPU:-}" ]; then set -- "$@" --gpu "$KVLAB_GPU"; fi
if [ -n "${KVLAB_REDIS_URL:-}" ]; then set -- "$@" --redis-url "$KVLAB_REDIS_URL"; fi
if [ "${KVLAB_HOST:-0.0.0.0}" = "127.0.0.1" ]; then
  exec /usr/local/bin/kvlab "$@" --port "${KVLAB_PORT:-8000}"
fi
INNER=$(( ${KVLAB_PORT:-8000} + 1 ))
/usr/local/bin/kvlab "$@" --port "$INNER" &
EMU=$!
socat "TCP-LISTEN:${KVLAB_PORT:-8000},bind=${KVLAB_HOST:-0.0.0.0},fork,reuseaddr" "TCP:127.0.0.1:$INNER" &
FWD=$!
trap 'kill -TERM "$EMU" "$FWD" 2>/dev/null; wait "$EMU"; exit 0' TERM INT
# Either one ending ends the container.
while kill -0 "$EMU" 2>/dev/null && kill -0 "$FWD" 2>/dev/null; do sleep 1; done
kill -TERM "$EMU" "$FWD" 2>/dev/null || true
wait "$EMU" || exit 1
