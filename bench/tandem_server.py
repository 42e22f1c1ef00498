"""Start `tandem serve` on a free port for the bench scripts; (process, host:port)."""
import re
import subprocess
import threading


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
