#!/usr/bin/env python3
"""Run llama.cpp's HTTP server (pip package xllamacpp) in the foreground until SIGTERM/SIGINT.

Written into the run directory by kvlab; kvlab stops it with SIGTERM, then SIGKILL.

usage: serve_llamacpp.py MODEL.gguf --port P [--ctx 8192] [--parallel 1] [--threads 2]
       [--cache-ram-mib N] [--alias NAME]
"""
import argparse
import signal
import sys

import xllamacpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ctx", type=int, default=8192, help="KV cache tokens, shared by all slots")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alias", default="tiny")
    ap.add_argument("--cache-ram-mib", type=int, default=None, help="host prompt cache; 0 = off")
    a = ap.parse_args()

    # Block the stop signals before the server starts its threads, then wait for one.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    p = xllamacpp.CommonParams()
    p.model.path = a.model
    p.model_alias = {a.alias}
    p.hostnames = [a.host]
    p.port = a.port
    p.n_ctx = a.ctx
    p.n_parallel = a.parallel
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.endpoint_metrics = True
    p.endpoint_slots = True
    p.endpoint_props = True
    p.cache_prompt = True
    if a.cache_ram_mib is not None:
        p.cache_ram_mib = a.cache_ram_mib
    p.sampling.seed = 1234
    server = xllamacpp.Server(p)
    print("listening", server.listening_address, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server
    sys.exit(0)


if __name__ == "__main__":
    main()
