#!/usr/bin/env python3
"""`tandem serve` against llama-server on the same file, in the same run: concurrent
streaming clients on each, one server at a time.

    bench/server-vs-llama-cpp.py --llama-server PATH [--tandem target/release/tandem]
        [-m MODEL] [--clients 8] [--parallel 8] [-n 128]
        [--tandem-args "--backend cuda -ngl 99"] [--llama-args "-ngl 99"]

Each server gets `--parallel` slots (tandem -np, llama-server -np) and a context of 2048
tokens a slot; after one warm-up request, `--clients` streaming completions of mixed prompt
lengths (8 to ~600 words, greedy, `-n` tokens each, end of text ignored) start at once.
Reported per server: aggregate generated tokens/s, time to first token p50/p99, the
server's peak RSS and, where nvidia-smi answers, the peak GPU memory; then tandem's ratio.
Python's standard library only.
"""
import argparse
import os
import shlex
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tandem_server  # noqa: E402
from tandem_server import pct, prompt, rss_mib, stream  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GpuPeak:
    """Peak used GPU memory (MiB) while running, sampled by nvidia-smi every 200 ms."""

    def __init__(self):
        self.peak, self.stop = None, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                used = max(int(v) for v in out.split())
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self.stop.wait(0.2)

    def finish(self):
        self.stop.set()
        self.thread.join()
        return self.peak


def load(addr, bodies):
    """All bodies at once: (wall seconds, results)."""
    results = [None] * len(bodies)

    def client(i):
        results[i] = stream(addr, bodies[i])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, results


def measure(name, proc, addr, bodies, gpu):
    try:
        stream(addr, dict(bodies[0], max_tokens=8))  # warm-up: weights loaded, kernels compiled
        wall, results = load(addr, bodies)
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    gpu_mib = gpu.finish()
    failed = [r for r in results if r[0] != 200]
    ttft = [r[2] for r in results if r[0] == 200 and r[2] is not None]
    tokens = sum(r[3] for r in results if r[0] == 200)
    row = {"name": name, "failed": len(failed), "tokens": tokens, "wall": wall, "tps": tokens / wall,
           "p50": pct(ttft, 50) if ttft else float("nan"), "p99": pct(ttft, 99) if ttft else float("nan"),
           "rss": rss, "gpu": gpu_mib}
    for r in failed[:3]:
        print(f"  {name}: status {r[0]}: {r[1][:200]}")
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", default=os.path.join(ROOT, "target/release/tandem"))
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("-m", "--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--tandem-args", default="")
    ap.add_argument("--llama-args", default="")
    args = ap.parse_args()
    ctx = str(args.parallel * 2048)
    bodies = [{"prompt": prompt(i), "max_tokens": args.n, "n_predict": args.n, "temperature": 0, "ignore_eos": True,
               "stream": True, "stream_options": {"include_usage": True}, "cache_prompt": False} for i in range(args.clients)]
    rows = []
    gpu = GpuPeak()
    proc, addr = tandem_server.start(args.tandem, args.model, ["-np", str(args.parallel), "-c", ctx, *shlex.split(args.tandem_args)])
    rows.append(measure("tandem", proc, addr, bodies, gpu))
    gpu = GpuPeak()
    proc, addr = tandem_server.start_llama_server(args.llama_server, args.model, ["-np", str(args.parallel), "-c", ctx, *shlex.split(args.llama_args)])
    rows.append(measure("llama-server", proc, addr, bodies, gpu))
    print(f"model {os.path.basename(args.model)}: {args.clients} streaming clients at once, {args.parallel} slots, "
          f"prompts 8-600 words, {args.n} tokens each")
    print(f"| server       | failed | tokens | seconds | tokens/s | TTFT p50 s | TTFT p99 s | peak RSS MiB | peak GPU MiB |")
    print(f"| ------------ | -----: | -----: | ------: | -------: | ---------: | ---------: | -----------: | -----------: |")
    for r in rows:
        g = "-" if r["gpu"] is None else str(r["gpu"])
        print(f"| {r['name']:<12} | {r['failed']:>6} | {r['tokens']:>6} | {r['wall']:>7.1f} | {r['tps']:>8.1f} | {r['p50']:>10.2f} | "
              f"{r['p99']:>10.2f} | {r['rss']:>12.0f} | {g:>12} |")
    t, l = rows
    print(f"tandem / llama-server: aggregate tokens/s {t['tps'] / l['tps']:.2f}x, TTFT p99 {t['p99'] / l['p99']:.2f}x")
    sys.exit(0 if not t["failed"] and not l["failed"] else 1)


if __name__ == "__main__":
    main()
