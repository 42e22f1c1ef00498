#!/usr/bin/env python3
"""Regenerate tests/fixtures/variants.json: llama.cpp's tokenization of a corpus
under pre-tokenizers and SentencePiece settings the real test models do not use.

Variants are vocab-only copies of the test models with metadata overridden
(`tokenizer.ggml.pre`, `add_space_prefix`, `general.name`, a renamed token), made
with our `vocab_only` example; llama.cpp tokenizes them (llama-tokenize) and
detokenizes id sequences (detok.cpp, built here against libllama.a).

usage: crates/tokenizer/scripts/crosscheck.py   (from the workspace root)
env:   LLAMA_CPP_BUILD (default /root/cache/llama/build), LLAMA_CPP_SOURCE (default:
       from the build's CMakeCache.txt), TANDEM_MODELS_DIR (default models/)
"""
import glob, json, os, random, re, subprocess, sys, tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../.."))
BUILD = os.environ.get("LLAMA_CPP_BUILD", "/root/cache/llama/build")
MODELS = os.environ.get("TANDEM_MODELS_DIR", os.path.join(ROOT, "models"))
SMOL, GEMMA = "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"
OUT = os.path.join(ROOT, "crates/tokenizer/tests/fixtures/variants.json")

# One pre-tokenizer name per distinct llama.cpp configuration (SmolLM2's vocab).
PRES = ["", "default", "gpt-2", "starcoder", "command-r", "llama-bpe", "dbrx", "glm4", "chatglm-bpe", "qwen2",
        "stablelm2", "qwen35", "deepseek-llm", "deepseek-coder", "deepseek-v3", "hunyuan-dense", "spark2_5", "youtu",
        "falcon", "jais-2", "gemma4", "sarvam-moe", "viking", "poro-chat", "tekken", "chameleon", "exaone-moe", "gpt-4o",
        "granite-embed-multi-97m", "bailingmoe", "seed-coder", "ufakzeka", "laguna", "minicpm5"]
# "+digit-merges" adds tokens/merges for 2- and 3-digit strings (SmolLM2 has only
# single digits), so that digit grouping differences show in the ids.
VARIANTS = [{"name": "smollm2 pre=%r" % p, "model": SMOL, "set": {"tokenizer.ggml.pre": p}, "digit_merges": True} for p in PRES]
VARIANTS += [
    {"name": "smollm2 model=gemma4", "model": SMOL, "set": {"tokenizer.ggml.model": "gemma4"}},
    {"name": "gemma3 add_space_prefix", "model": GEMMA, "set": {"tokenizer.ggml.add_space_prefix": True}},
    {"name": "gemma3 phi-3 rstrip", "model": GEMMA,
     "set": {"tokenizer.ggml.add_space_prefix": True, "general.name": "Phi-3 mini"}, "rename": {"6": "<|endoftext|>"}},
]
DECODE_VARIANTS = ["smollm2 pre='gpt-2'", "smollm2 pre='llama-bpe'", "smollm2 model=gemma4", "gemma3 add_space_prefix"]

def texts():
    hand = ["", " ", "  ", "\n", "\n\n\n", " \n", "\t", "\r\n", "Hello world", " Hello world", "hello\n\nworld  ",
            "I'm you're he's we've they'll I'd don't WE'RE IT'S 'tis O'Neil", "3.14159 1234567 1,000,000 12th 0x1F",
            "def f(x):\n    return x**2  # comment\n\tpass\n", "<html><body>Hi</body></html>", "ünïcödé naïve café",
            "中文测试，你好世界。", "日本語のテキスト", "한국어 텍스트", "Привет мир", "مرحبا بالعالم", "नमस्ते दुनिया",
            "🦙🦙 🤖👍🏽 👨‍👩‍👧‍👦 ❤️", "a\u00a0b\u3000c\u0085d\u2028e", "e\u0301 a\u0308", "▁▁leading ▁ marks",
            "<|im_start|>user\nHi<|im_end|>\n", "<start_of_turn>user\nHi<end_of_turn>\n", "x<bos>y<eos>z</s> <s> ",
            "   <end_of_turn>   ", "\t\t\tindent\n\n  x", "...!!!???,,,", "a , b . c ? d ! e ' f ' g", "don 't can 't it 's",
            "Mixed CASE camelCase snake_case SCREAMING_CASE", "numbers123and456letters", "1234567 12 x99999 2024-01-31", "$100 + 50% = ~150 <=> ^_^ |x|",
            "x\u200bx\ufeffx", "ß ẞ ǅ 𝔘𝔫𝔦 𝟙𝟚𝟛 Ⅻ ½ ² ③", "tab\tsep\n1\t2", "trailing spaces    ", "\r\r\n\n\r a\rb",
            "<sentinel:12> IMGIMGABZ", "\u01c5ungla \u01c7 \u01c8", "\u0132\u0133\u0149\u017f\u212a \u2126 \u1f7d \u0390"]
    rnd = random.Random(7)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n\r", "  ", ".,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`",
             "éèêëàâäôöûüçñÉÀÖÜßøåæœ", "中文字测试你好世界日本語한국어", "🦙🤖👍🏽❤️\u200d", "\u0301\u0308\u0327",
             "\u00a0\u3000\u2028\u0085\u200b", "αβγδΑΒΓЖжщ", "٠١٢٣४५६", "'s'S'll'LL're'RE've'd'm't", "▁"]
    specials = ["<|im_end|>", "<|endoftext|>", "<end_of_turn>", "</s>", "<s>", "\n\n", "   ", "\t\t", "<td>"]
    for _ in range(20):
        s = ""
        for _ in range(rnd.randint(1, 25)):
            if rnd.random() < 0.08:
                s += rnd.choice(specials)
            else:
                p = rnd.choice(pools)
                s += "".join(rnd.choice(p) for _ in range(rnd.randint(1, 6)))
        hand.append(s)
    return hand

def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, **kw)
    if r.returncode:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), r.stderr.decode()[-2000:]))
    return r.stdout

def main():
    src = os.environ.get("LLAMA_CPP_SOURCE") or re.search(r"llama\.cpp_SOURCE_DIR:STATIC=(.*)", open(os.path.join(BUILD, "CMakeCache.txt")).read()).group(1)
    run(["cargo", "build", "-q", "--release", "-p", "tokenizer", "--example", "vocab_only"], cwd=ROOT)
    vocab_only = os.path.join(ROOT, "target/release/examples/vocab_only")
    tmp = tempfile.mkdtemp()
    detok = os.path.join(tmp, "detok")
    libs = [glob.glob(BUILD + "/src/libllama.a")[0]] + sorted(glob.glob(BUILD + "/ggml/**/libggml*.a", recursive=True))
    run(["g++", "-O2", "-std=c++17", "-I" + src + "/include", "-I" + src + "/ggml/include", os.path.join(os.path.dirname(__file__), "detok.cpp"),
         "-o", detok, "-Wl,--start-group"] + libs + ["-Wl,--end-group", "-fopenmp", "-lpthread", "-ldl", "-lm"])
    corpus = texts()
    out = {"description": "llama.cpp token ids (llama-tokenize, default mode: add_special = vocab add_bos, parse_special) "
                          "for vocab-only variants of the test models; generated by crates/tokenizer/scripts/crosscheck.py",
           "texts": corpus, "variants": []}
    rnd = random.Random(3)
    for v in VARIANTS:
        path = os.path.join(tmp, "v.gguf")
        args = ["%s=%s" % (k, ("bool:true" if val is True else val)) for k, val in v["set"].items()]
        args += ["token:%s=%s" % kv for kv in v.get("rename", {}).items()]
        args += ["+digit-merges"] if v.get("digit_merges") else []
        run([vocab_only, os.path.join(MODELS, v["model"]), path] + args)
        ids = []
        for t in corpus:
            f = os.path.join(tmp, "t.txt")
            open(f, "wb").write(t.encode())
            lines = run([BUILD + "/bin/llama-tokenize", "-m", path, "-f", f, "--ids", "--log-disable", "--no-escape"]).decode().split("\n")
            ids.append(json.loads([l for l in lines if l.startswith("[")][-1]))
        # Same ids as an earlier variant (e.g. only decode-time flags differ): say so.
        same = next((r["name"] for r in out["variants"] if r.get("ids") == ids), None)
        rec = dict(v, ids_same_as=same) if same else dict(v, ids=ids)
        if v["name"] in DECODE_VARIANTS:
            pool = sorted({i for e in ids for i in e})
            seqs = [rnd.sample(pool, rnd.randint(1, 10)) for _ in range(150)] + ids[:40]
            lines = "".join("%d %s\n" % (s, " ".join(map(str, q))) for q in seqs for s in (0, 1))
            hexes = run([detok, path, "decode"], input=lines.encode()).decode().split("\n")
            rec["decode"] = [[q, s, bytes.fromhex(h).decode("utf-8", "replace")] for (q, s), h in
                             zip([(q, s) for q in seqs for s in (0, 1)], hexes)]
        out["variants"].append(rec)
        print(v["name"], "done", file=sys.stderr)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fo:
        json.dump(out, fo, ensure_ascii=False, separators=(",", ":"))
        fo.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes", file=sys.stderr)

main()
