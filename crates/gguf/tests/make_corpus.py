#!/usr/bin/env python3
"""Writes the corpus of broken GGUF files (corpus/*.gguf) and corpus/EXPECTED, which maps
each file to a substring its error message must contain ('OK' = must parse).
The files are built byte by byte here, independently of our writer.

    python3 crates/gguf/tests/make_corpus.py
"""
import os, struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
os.makedirs(HERE, exist_ok=True)

def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b

def kv_u32(key, v):
    return s(key) + struct.pack("<II", 4, v)

def tensor(name, dims, ty, offset):
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, offset)

def gguf(kvs=(), tensors=(), version=3, data=b"", n_tensors=None, n_kv=None, align=32):
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += b"\0" * (-len(head) % align)
    return head + data

cases = {}
def case(name, data, expect):
    with open(os.path.join(HERE, name + ".gguf"), "wb") as f:
        f.write(data)
    cases[name] = expect

good_tensor = tensor("w", [32], 0, 0)
case("valid_minimal", gguf([kv_u32("a", 1)], [good_tensor], data=b"\0" * 128), "OK")
case("valid_vocab_only", gguf([s("tokenizer.ggml.model") + struct.pack("<I", 8) + s("llama")]), "OK")
case("empty", b"", "truncated file")
case("bad_magic", b"GGML" + b"\0" * 40, "not a GGUF file")
case("version_1", gguf(version=1), "unsupported GGUF version 1")
case("version_99", gguf(version=99), "unsupported GGUF version 99")
case("big_endian", b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "big-endian")
case("truncated_header", gguf([kv_u32("a", 1)], [good_tensor], data=b"\0" * 128)[:70], "truncated file")
case("huge_tensor_count", gguf(n_tensors=1 << 62), "tensor count")
case("huge_kv_count", gguf(n_kv=1 << 40), "metadata count")
case("huge_string_length", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60) + b"\0" * 16, "string length")
case("huge_array_length", gguf([s("arr") + struct.pack("<IIQ", 9, 4, 1 << 61)]), "array length")
case("unknown_value_type", gguf([s("k") + struct.pack("<I", 77)]), "unknown value type 77")
case("unknown_array_type", gguf([s("k") + struct.pack("<IIQ", 9, 55, 1)]), "unknown array element type 55")
case("invalid_utf8_key", gguf([s(b"\xff\xfe") + struct.pack("<II", 4, 1)]), "invalid UTF-8")
case("bad_bool", gguf([s("b") + struct.pack("<IB", 7, 2)]), "bool byte 2")
case("duplicate_key", gguf([kv_u32("a", 1), kv_u32("a", 2)]), "duplicate metadata key 'a'")
case("bad_alignment", gguf([kv_u32("general.alignment", 48)]), "power of two")
case("zero_alignment", gguf([kv_u32("general.alignment", 0)]), "power of two")
case("deep_arrays", gguf([s("n") + struct.pack("<IIQ", 9, 9, 1) + (struct.pack("<IQ", 9, 1) * 20)]), "nested too deeply")
case("unknown_tensor_type", gguf(tensors=[tensor("w", [32], 4, 0)], data=b"\0" * 128), "unknown type id 4")
case("too_many_dims", gguf(tensors=[tensor("w", [1] * 5, 0, 0)], data=b"\0" * 32), "5 dimensions")
case("zero_dims", gguf(tensors=[tensor("w", [], 0, 0)], data=b"\0" * 32), "0 dimensions")
case("shape_overflow", gguf(tensors=[tensor("w", [1 << 32, 1 << 32], 0, 0)]), "shape overflows")
case("bytes_overflow", gguf(tensors=[tensor("w", [1 << 62], 0, 0)]), "overflows")
case("ragged_blocks", gguf(tensors=[tensor("w", [33], 8, 0)], data=b"\0" * 64), "block size")
case("tensor_past_end", gguf(tensors=[tensor("w", [64], 0, 0)], data=b"\0" * 100), "extends past the end")
case("offset_past_end", gguf(tensors=[tensor("w", [8], 0, 1 << 40)], data=b"\0" * 64), "extends past the end")
case("misaligned_offset", gguf(tensors=[tensor("w", [8], 0, 3)], data=b"\0" * 64), "not a multiple of the alignment")
case("duplicate_tensor", gguf(tensors=[tensor("w", [8], 0, 0), tensor("w", [8], 0, 32)], data=b"\0" * 64), "duplicate tensor name 'w'")

with open(os.path.join(HERE, "EXPECTED"), "w") as f:
    f.write("# file: substring of the error message ('OK' = parses)\n")
    for name, expect in sorted(cases.items()):
        f.write(f"{name}.gguf: {expect}\n")
print(f"wrote {len(cases)} files to {HERE}")
