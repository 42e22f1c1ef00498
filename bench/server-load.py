#!/usr/bin/env python3
"""Load on `tandem serve`: many streaming clients at once, then the same requests alone.

    bench/server-load.py [--tandem target/release/tandem] [-m MODEL] [--clients 32]
                         [--parallel 4] [--queue 64] [-n 64] [--overload]

Starts the server (greedy, `--parallel` slots), sends `--clients` streaming completions of
mixed prompt lengths at once, and reports time to first token (p50/p99), aggregate tokens/s
and peak RSS. Every answer must equal the same request's answer when it runs alone (greedy):
a corrupted, mixed-up or failed stream fails the run. With --overload, a second server with
a tiny queue must answer the excess with 503 + Retry-After, never with a broken stream.
Python's standard library only.
"""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tandem_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tandem_server import pct, prompt, rss_mib, stream  # noqa: E402


def start(args, parallel, queue):
    return tandem_server.start(args.tandem, args.model, ["-np", str(parallel), "--queue", str(queue), "-c", str(parallel * 2048), "--temp", "0", "-t", str(args.threads)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", default=os.path.join(ROOT, "target/release/tandem"))
    ap.add_argument("-m", "--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--overload", action="store_true")
    args = ap.parse_args()
    bodies = [{"prompt": prompt(i), "max_tokens": args.n, "temperature": 0, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}, "cache_prompt": False} for i in range(args.clients)]
    proc, addr = start(args, args.parallel, args.queue)
    try:
        results = [None] * args.clients
        def client(i):
            results[i] = stream(addr, bodies[i])
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        failed = [(i, r) for i, r in enumerate(results) if r[0] != 200]
        ttft = [r[2] for r in results if r[0] == 200 and r[2] is not None]
        tokens = sum(r[3] for r in results if r[0] == 200)
        peak = rss_mib(proc.pid)
        # The same requests one at a time: greedy answers must not depend on the company.
        alone = [stream(addr, b) for b in bodies]
        mismatched = [i for i in range(args.clients) if results[i][0] == 200 and alone[i][1] != results[i][1]]
    finally:
        proc.terminate()
        proc.wait()
    print(f"server: {os.path.basename(args.model)}, {args.parallel} slots, queue {args.queue}, {args.threads} threads")
    print(f"{args.clients} streaming clients, prompts 8-600 words, {args.n} tokens each")
    print(f"failed: {len(failed)}   answers differing from the same request alone: {len(mismatched)}")
    if ttft:
        print(f"time to first token: p50 {pct(ttft, 50):.2f} s   p99 {pct(ttft, 99):.2f} s")
    print(f"aggregate: {tokens} tokens in {wall:.1f} s = {tokens / wall:.1f} tokens/s   peak RSS {peak:.0f} MiB")
    ok = not failed and not mismatched
    for i, r in failed[:5]:
        print(f"  client {i}: status {r[0]}: {r[1][:200]}")
    for i in mismatched[:5]:
        print(f"  client {i}: {results[i][1][:80]!r} vs alone {alone[i][1][:80]!r}")
    if args.overload:
        proc, addr = start(args, 1, 1)
        try:
            res = [None] * 8
            ths = [threading.Thread(target=lambda i=i: res.__setitem__(i, stream(addr, bodies[i]))) for i in range(8)]
            for t in ths:
                t.start()
            for t in ths:
                t.join()
        finally:
            proc.terminate()
            proc.wait()
        served = sum(1 for r in res if r[0] == 200)
        refused = [r for r in res if r[0] == 503]
        bad = [r for r in res if r[0] not in (200, 503) or (r[0] == 503 and not r[4])]
        print(f"overload (1 slot, queue 1, 8 clients): {served} served, {len(refused)} refused with 503 + Retry-After, {len(bad)} other")
        ok = ok and not bad and served >= 2 and refused
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
