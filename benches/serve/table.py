#!/usr/bin/env python3
"""Prints benches/serve/compare.sh's results: requests/s and p50/p99 per server, endpoint
and concurrency (median of the rounds), cifar-serve's ratios to the better FastAPI set-up,
and each server's per-request overhead at concurrency 1. Standard library only.

    python3 table.py WORK_DIR
"""
import json
import os
import re
import statistics
import sys
from collections import defaultdict


def samples(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        out[name.strip()] = float(value)
    return out


def delta(work, name, key_re):
    before, after = samples(os.path.join(work, f"{name}.before")), samples(os.path.join(work, f"{name}.after"))
    keys = [k for k in after if re.fullmatch(key_re, k)]
    return sum(after[k] - before.get(k, 0.0) for k in keys)


def main():
    work = sys.argv[1]
    cells = defaultdict(list)
    for line in open(os.path.join(work, "rows.jsonl")):
        r = json.loads(line)
        cells[(r["endpoint"], r["concurrency"], r["server"])].append(r)
    servers = ["cifar", "fastapi-2w", "fastapi-1w"]
    names = {"cifar": "cifar-serve", "fastapi-2w": "FastAPI+ORT, 2 workers x 1 thread", "fastapi-1w": "FastAPI+ORT, 1 worker x 2 threads"}
    print("| endpoint | concurrency | server | requests/s | p50 ms | p99 ms | failed |")
    print("|---|---:|---|---:|---:|---:|---:|")
    ratios = []
    for endpoint in ("InferBinary", "Classify"):
        for c in (1, 16, 64):
            med = {}
            for s in servers:
                rows = cells.get((endpoint, c, s), [])
                if not rows:
                    continue
                m = {k: statistics.median(r[k] for r in rows) for k in ("requests_per_s", "p50_ms", "p99_ms")}
                m["failed"] = sum(r["failed"] for r in rows)
                med[s] = m
                print(f"| {endpoint} | {c} | {names[s]} | {m['requests_per_s']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['failed']} |")
            others = [med[s] for s in servers[1:] if s in med]
            if "cifar" in med and others:
                best = max(others, key=lambda m: m["requests_per_s"])
                ratios.append((endpoint, c, med["cifar"]["requests_per_s"] / best["requests_per_s"], med["cifar"]["p99_ms"], best["p99_ms"]))
    print("\ncifar-serve against the better FastAPI set-up (requests/s ratio; p99 ms, ours vs theirs):")
    for endpoint, c, ratio, p99, their_p99 in ratios:
        target = ">= 2x and lower p99" if c > 1 else "ahead"
        print(f"  {endpoint:12s} c={c:<3d} {ratio:5.2f}x   p99 {p99:.2f} vs {their_p99:.2f}   (target: {target})")
    try:
        n = delta(work, "cifar", r'nv_inference_request_success\{model="bench",version="\d+"\}')
        req = delta(work, "cifar", r'cifar_request_duration_seconds_sum\{endpoint="/v2/models/\{name\}/infer"\}')
        cnt = delta(work, "cifar", r'cifar_request_duration_seconds_count\{endpoint="/v2/models/\{name\}/infer"\}')
        comp = delta(work, "cifar", r'nv_inference_compute_infer_duration_us\{model="bench",version="\d+"\}') / 1e6
        f_n = delta(work, "fastapi-1w", "fastapi_requests")
        f_req = delta(work, "fastapi-1w", "fastapi_request_seconds")
        f_comp = delta(work, "fastapi-1w", "fastapi_compute_seconds")
        print("\nper-request overhead at concurrency 1 (request time minus model time, from /metrics, 2,000 binary infers):")
        print(f"  cifar-serve: {1e3 * (req / cnt - comp / n):.3f} ms  (request {1e3 * req / cnt:.3f} ms, compute {1e3 * comp / n:.3f} ms)")
        print(f"  FastAPI+ORT (1 worker): {1e3 * (f_req - f_comp) / f_n:.3f} ms  (request {1e3 * f_req / f_n:.3f} ms, model {1e3 * f_comp / f_n:.3f} ms)")
    except (OSError, ZeroDivisionError) as e:
        print(f"\n(no overhead figures: {e})")


if __name__ == "__main__":
    main()
