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
import http.client
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tandem_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the river runs past old stone walls while children count the boats and the sun "
         "goes down over a quiet town where nobody hurries and every door stands open ").split()


def prompt(i):
    # Mixed lengths: 8 to about 600 words.
    n = 8 + (i * 37) % 600
    return f"Story {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def start(args, parallel, queue):
    return tandem_server.start(args.tandem, args.model, ["-np", str(parallel), "--queue", str(queue), "-c", str(parallel * 2048), "--temp", "0", "-t", str(args.threads)])


def stream(addr, body):
    """(status, text, seconds to the first text, tokens, retry_after)."""
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        return r.status, r.read().decode(), None, 0, r.getheader("Retry-After")
    text, first, tokens, done = "", None, 0, False
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            break
        ev = json.loads(data)
        if "error" in ev:
            return 500, json.dumps(ev), None, 0, None
        for ch in ev["choices"]:
            if ch.get("text"):
                first = first if first is not None else time.perf_counter() - t0
                text += ch["text"]
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    if not done:
        return 599, "stream ended without [DONE]", None, 0, None
    return 200, text, first, tokens, None


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM")).split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


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
