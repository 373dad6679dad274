#!/bin/sh
# Maps kvlab's engine-image contract to llama.cpp's server (xllamacpp):
# /etc/kvlab/engine.env -> serve_llamacpp.py flags. `exec`, so the stop signal reaches the server.
set -eu
ENV_FILE=${KVLAB_ENGINE_ENV:-/etc/kvlab/engine.env}
if [ ! -r "$ENV_FILE" ]; then
  echo "kvlab-engine: $ENV_FILE is missing; run this image with the kvlab launcher (--engine docker)" >&2
  exit 2
fi
. "$ENV_FILE"
if [ -z "${KVLAB_CACHE_RAM_MIB:-}" ]; then
  echo "kvlab-engine: llama.cpp cannot express the \`${KVLAB_TIER:-?}\` tier (no LMCache disk or remote store); use --tier baseline or --tier cpu" >&2
  exit 2
fi
exec /opt/venv/bin/python /opt/kvlab/serve_llamacpp.py /opt/kvlab/models/tiny.gguf \
  --host "${KVLAB_HOST:-0.0.0.0}" --port "${KVLAB_PORT:-8000}" \
  --ctx 8192 --parallel 1 --threads "${KVLAB_THREADS:-2}" \
  --cache-ram-mib "$KVLAB_CACHE_RAM_MIB" --alias "${KVLAB_MODEL:-tiny}"
