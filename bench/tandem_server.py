"""Shared by the server bench scripts: start `tandem serve` (or llama-server) on a free
port, stream one completion, percentiles, peak RSS. Python's standard library only."""
import http.client
import json
import re
import socket
import subprocess
import threading
import time

WORDS = ("the river runs past old stone walls while children count the boats and the sun "
         "goes down over a quiet town where nobody hurries and every door stands open ").split()


def start(tandem, model, extra):
    """Run `tandem serve -m MODEL --port 0 EXTRA...` and wait until it listens."""
    proc = subprocess.Popen([tandem, "serve", "-m", model, "--port", "0", *extra], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("the server exited before listening")


def start_llama_server(binary, model, extra, timeout=600):
    """Run llama-server on a free port and wait until /health answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode} before it was ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, addr
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("llama-server was not ready in time")


def prompt(i):
    """Mixed lengths: 8 to about 600 words."""
    n = 8 + (i * 37) % 600
    return f"Story {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def stream(addr, body):
    """One streaming completion: (status, text, seconds to the first text, tokens, retry_after).
    Tokens: the usage the server reports, else the number of chunks that carried text."""
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        return r.status, r.read().decode(), None, 0, r.getheader("Retry-After")
    text, first, tokens, chunks, done = "", None, None, 0, False
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
        for ch in ev.get("choices", []):
            if ch.get("text"):
                first = first if first is not None else time.perf_counter() - t0
                text += ch["text"]
                chunks += 1
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    if not done:
        return 599, "stream ended without [DONE]", None, 0, None
    return 200, text, first, tokens if tokens is not None else chunks, None


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM")).split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
