#!/usr/bin/env python3
"""Multi-turn chat on `tandem serve`: time to first token per turn with the prompt cache
and without it (`cache_prompt: false`), on the same conversation.

    bench/server-chat-cache.py [--tandem target/release/tandem] [-m MODEL] [--turns 10]
                               [--history 2000] [-n 32]

The conversation starts with a system prompt of about `--history` tokens (a RAG preamble,
say); each turn adds a user question and the model's answer. With the cache, a turn's
time to first token should not grow with the history: only the new messages are prefilled.
Python's standard library only.
"""
import argparse
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tandem_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(args):
    return tandem_server.start(args.tandem, args.model, ["-np", "1", "-c", "8192", "--temp", "0", "-t", str(args.threads)])


def turn(addr, messages, n, cache):
    """(answer, seconds to the first token, prompt tokens, cached tokens)."""
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {"messages": messages, "max_tokens": n, "temperature": 0, "stream": True, "cache_prompt": cache,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"status {r.status}: {r.read().decode()}")
    text, first, usage = "", None, {}
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        for ch in ev["choices"]:
            piece = ch.get("delta", {}).get("content")
            if piece:
                first = first if first is not None else time.perf_counter() - t0
                text += piece
        usage = ev.get("usage") or usage
    return text, first if first is not None else time.perf_counter() - t0, usage.get("prompt_tokens", 0), \
        usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", default=os.path.join(ROOT, "target/release/tandem"))
    ap.add_argument("-m", "--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--history", type=int, default=2000, help="system prompt length in tokens (about)")
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    facts = " ".join(f"Fact {i}: the lighthouse number {i} stands on rock {i * 7 % 13} and was painted in year {1800 + i}."
                     for i in range(args.history // 28))
    questions = ["Which lighthouse is the oldest?", "What colour is rock 3?", "Summarise the facts.", "Name two years.",
                 "Which rock holds lighthouse 12?", "Is there a pattern?", "Count the lighthouses.", "What came last?",
                 "Any on rock 0?", "Thank you, anything else?"]
    proc, addr = start(args)
    rows = []
    try:
        for cache in (True, False):
            messages = [{"role": "system", "content": facts}]
            for k in range(args.turns):
                messages.append({"role": "user", "content": questions[k % len(questions)]})
                answer, ttft, prompt, cached = turn(addr, messages, args.n, cache)
                messages.append({"role": "assistant", "content": answer})
                rows.append((cache, k + 1, prompt, cached, ttft))
    finally:
        proc.terminate()
        proc.wait()
    print(f"model {os.path.basename(args.model)}, {args.threads} threads, {args.turns} turns, {args.n} tokens per answer")
    print("| cache | turn | prompt tokens | cached | time to first token (s) |")
    print("|---|---:|---:|---:|---:|")
    for cache, k, prompt, cached, ttft in rows:
        print(f"| {'on' if cache else 'off'} | {k} | {prompt} | {cached} | {ttft:.3f} |")
    on = [r[4] for r in rows if r[0] and r[1] > 1]
    off = [r[4] for r in rows if not r[0] and r[1] > 1]
    print(f"turns 2-{args.turns}: mean time to first token {sum(on) / len(on):.3f} s with the cache, "
          f"{sum(off) / len(off):.3f} s without")
    sys.exit(0)


if __name__ == "__main__":
    main()
