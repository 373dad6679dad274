"""libCacheSim's replay of a block-access sequence: the independent oracle of kvlab's policies.

Usage: python oracle.py IDS_FILE TRACE_BIN CAPACITY[,CAPACITY...] POLICY[,POLICY...]

IDS_FILE holds one block id per line, in access order. The script writes the sequence as
libCacheSim's oracleGeneral binary trace (TRACE_BIN: per request a packed little-endian
uint32 clock time, uint64 object id, uint32 size, int64 next access in virtual time or -1)
so that Belady sees each access's next use, then replays it through each policy at each
capacity (in objects: every block has size 1) with libCacheSim's own C loop (process_trace).
Its hash table is sized to the trace (2^hashpower buckets, at least twice the distinct ids):
the default (2^24) costs more to clear than a replay of these traces takes. Prints one JSON
object: hits per policy and capacity, and the seconds each replay took (process_trace only).
"""

import json
import struct
import sys
import time

import libcachesim as lcs

# libCacheSim's defaults otherwise; the hash table is sized to the trace (see main).
POLICIES = {
    "lru": lcs.LRU,
    "lfu": lcs.LFU,
    "sieve": lcs.Sieve,
    "s3fifo": lcs.S3FIFO,
    "fifo": lcs.FIFO,
    "belady": lcs.Belady,
}


def main():
    ids_file, trace_bin, caps, policies = sys.argv[1:5]
    with open(ids_file) as f:
        ids = [int(line) for line in f if line.strip()]
    nxt = [-1] * len(ids)
    last = {}
    for i in range(len(ids) - 1, -1, -1):
        nxt[i] = last.get(ids[i], -1)
        last[ids[i]] = i
    with open(trace_bin, "wb") as f:
        f.write(b"".join(struct.pack("<IQIq", i + 1, k, 1, n) for i, (k, n) in enumerate(zip(ids, nxt))))
    hashpower = max(10, len(set(ids)).bit_length() + 1)
    out = {"requests": len(ids), "libcachesim": lcs.__version__ if hasattr(lcs, "__version__") else None,
           "hits": {}, "seconds": {}}
    for policy in policies.split(","):
        out["hits"][policy] = {}
        out["seconds"][policy] = {}
        for cap in (int(c) for c in caps.split(",")):
            reader = lcs.TraceReader(trace_bin, lcs.TraceType.ORACLE_GENERAL_TRACE)
            cache = POLICIES[policy](cap, hashpower=hashpower)
            start = time.perf_counter()
            miss_ratio, _ = cache.process_trace(reader)
            out["seconds"][policy][str(cap)] = time.perf_counter() - start
            out["hits"][policy][str(cap)] = round((1.0 - miss_ratio) * len(ids))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
