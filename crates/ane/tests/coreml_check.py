#!/usr/bin/env python3
"""Second opinion on our MIL programs and weight blobs from coremltools (ANE.md §7).

For each CASE.mil + CASE.weight.bin in the directory given, every function of our MIL
text is rebuilt with coremltools' MIL builder, op by op: each BLOBFILE constant is read
from our blob through its header, each op is type-checked by the builder, and the shape
and dtype it infers must equal the ones our text declares. The function is converted to
an ML program (fp16, iOS18, no optimisation passes, no model load: Linux has no Core ML
runtime) and the package's weight.bin is compared with ours: byte for byte for a
single-function program; for banks, each function's blob records (dtype, size, data)
against ours in order. Exits non-zero with the first difference.

Usage: coreml_check.py DIR
"""
import os
import re
import struct
import sys
import tempfile

import numpy as np
import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

TYPE = r"(tensor<(\w+), \[([\d, ]*)\]>|\w+)"
FUNC = re.compile(r"^\s*func (\w+)<(\w+)>\((.*)\) \{$")
CONST = re.compile(r"^\s*" + TYPE + r" (\w+) = const\(\)\[name=string\(\"(\w+)\"\), val=(.*)\];$")
STMT = re.compile(r"^\s*" + TYPE + r" (\w+) = (\w+)\((.*)\)\[name=string\(\"(\w+)\"\)\];$")
END = re.compile(r"^\s*\} -> \(([\w, ]*)\);$")
BLOB = re.compile(r"tensor<(fp16|int8), \[([\d, ]+)\]>\(BLOBFILE\(path=string\(\"([^\"]+)\"\), offset=uint64\((\d+)\)\)\)")
DTYPES = {"fp16": (1, np.float16), "int8": (4, np.int8)}


class Mismatch(Exception):
    pass


def dims(s):
    return [int(d) for d in s.split(",") if d.strip()]


def read_blob(blob, offset, shape, ty="fp16"):
    """An fp16 or int8 record of our blob, through its metadata (ANE.md §3 table)."""
    code, npty = DTYPES[ty]
    sentinel, dtype, size, data = struct.unpack_from("<IIQQ", blob, offset)
    n = int(np.prod(shape))
    if sentinel != 0xDEADBEEF or dtype != code or size != np.dtype(npty).itemsize * n or data != offset + 64:
        raise Mismatch(f"blob record at {offset}: sentinel {sentinel:#x} dtype {dtype} size {size} data {data}, want {ty} x {n}")
    arr = np.frombuffer(blob, dtype=npty, count=n, offset=data).reshape(shape)
    return arr, [(dtype, size, blob[data:data + size])]


def literal(val, blob):
    """A const's val literal as a numpy value, plus its blob record for BLOBFILE constants."""
    m = BLOB.fullmatch(val)
    if m:
        return read_blob(blob, int(m.group(4)), dims(m.group(2)), m.group(1))
    m = re.fullmatch(r"string\(\"(.*)\"\)", val)
    if m:
        return m.group(1), None
    m = re.fullmatch(r"(int32|fp16)\((.*)\)", val)
    if m:
        return (int(m.group(2)) if m.group(1) == "int32" else np.float16(float(m.group(2)))), None
    m = re.fullmatch(r"tensor<int32, \[\d+\]>\(\[([-\d, ]*)\]\)", val)
    if m:
        return [int(v) for v in m.group(1).split(",")], None
    raise Mismatch(f"unknown literal {val}")


def parse(text):
    """Our dialect, one statement per line (as crate::mil writes it)."""
    funcs, cur = [], None
    for n, line in enumerate(text.splitlines(), 1):
        if (m := FUNC.match(line)):
            ins = [re.fullmatch(r"tensor<fp16, \[([\d, ]+)\]> (\w+)", a.strip()) for a in re.split(r", (?=tensor)", m.group(3))]
            cur = {"name": m.group(1), "inputs": [(i.group(2), dims(i.group(1))) for i in ins], "body": []}
        elif (m := CONST.match(line)):
            cur["body"].append(("const", m.groups()))
        elif (m := STMT.match(line)):
            cur["body"].append(("op", m.groups()))
        elif (m := END.match(line)):
            cur["outputs"] = [o.strip() for o in m.group(1).split(",")]
            funcs.append(cur)
            cur = None
        elif cur is not None:
            raise Mismatch(f"line {n} not understood: {line}")
    return funcs


def build(func, blob):
    """Rebuild one function with the builder; returns the program and our blob records in const order."""
    records = []
    specs = [mb.TensorSpec(shape=tuple(s), dtype=types.fp16) for _, s in func["inputs"]]

    def body(*xs):
        env = {name: x for (name, _), x in zip(func["inputs"], xs)}
        consts, recs = {}, {}
        for kind, g in func["body"]:
            if kind == "const":
                _, _, _, out, _, val = g
                consts[out], recs[out] = literal(val, blob)
                continue
            ty, dt, shape, out, op, args, name = g
            a = dict(kv.split("=", 1) for kv in args.split(", "))
            c = lambda k: consts[a[k]]
            v_ = lambda k: env[a[k]] if a[k] in env else consts[a[k]]
            if op == "constexpr_blockwise_shift_scale":
                # int8 data and fp16 scales: coremltools writes both records, data first.
                consts[out] = mb.constexpr_blockwise_shift_scale(data=c("data"), scale=c("scale"), name=name)
                recs[out] = recs[a["data"]] + recs[a["scale"]]
                v = consts[out]
                got = (list(v.shape), types.builtin_to_string(v.dtype))
                if got != (dims(shape or ""), dt):
                    raise Mismatch(f"{func['name']} {out} = {op}: we declare {ty}, coremltools infers {got}")
                continue
            if op == "conv":
                records.extend(recs[a["weight"]])
                v = mb.conv(x=v_("x"), weight=c("weight"), strides=c("strides"), pad_type=c("pad_type"),
                            pad=c("pad"), dilations=c("dilations"), groups=c("groups"), name=name)
            elif op == "transpose":
                v = mb.transpose(x=v_("x"), perm=c("perm"), name=name)
            elif op in ("add", "mul"):
                v = getattr(mb, op)(x=v_("x"), y=v_("y"), name=name)
            elif op in ("sigmoid", "silu"):
                v = getattr(mb, op)(x=v_("x"), name=name)
            else:
                raise Mismatch(f"{func['name']} {out}: op {op} not handled")
            got = (list(v.shape), types.builtin_to_string(v.dtype))
            if got != (dims(shape or ""), dt):
                raise Mismatch(f"{func['name']} {out} = {op}: we declare {ty}, coremltools infers {got}")
            env[out] = v
        return tuple(env[o] for o in func["outputs"])

    # The builder reads input names from the signature: give it one with ours.
    names = ", ".join(n for n, _ in func["inputs"])
    scope = {"body": body}
    exec(f"def prog({names}):\n    return body({names})", scope)
    prog = mb.program(input_specs=specs, opset_version=ct.target.iOS18)(scope["prog"])
    return prog, records


def run_case(path, blob):
    text = open(path).read()
    funcs = parse(text)
    if not funcs or len(funcs) != text.count("    func "):
        raise Mismatch(f"parsed {len(funcs)} functions")
    for f in funcs:
        prog, records = build(f, blob)
        with tempfile.TemporaryDirectory() as d:
            m = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                           minimum_deployment_target=ct.target.iOS18, skip_model_load=True,
                           pass_pipeline=ct.PassPipeline.EMPTY)
            m.save(os.path.join(d, "m.mlpackage"))
            theirs = open(os.path.join(d, "m.mlpackage", "Data", "com.apple.CoreML", "weights", "weight.bin"), "rb").read()
        count, version = struct.unpack_from("<II", theirs, 0)
        if count != len(records) or version != 2:
            raise Mismatch(f"{f['name']}: coremltools wrote {count} blobs (v{version}), we reference {len(records)}")
        if len(funcs) == 1 and theirs != blob:
            diff = [i for i, (p, q) in enumerate(zip(theirs, blob)) if p != q][:1] or [min(len(theirs), len(blob))]
            raise Mismatch(f"weight.bin differs from coremltools' at byte {diff[0]} ({len(blob)} vs {len(theirs)} bytes)")
        off = 64
        for i, (dtype, size, data) in enumerate(records):
            s, t, z, o = struct.unpack_from("<IIQQ", theirs, off)
            if (s, t, z) != (0xDEADBEEF, dtype, size) or theirs[o:o + z] != data or o != off + 64:
                raise Mismatch(f"{f['name']}: blob record {i} differs")
            off = (o + z + 63) // 64 * 64
    return len(funcs)


def main():
    d = sys.argv[1]
    cases = sorted(p for p in os.listdir(d) if p.endswith(".mil"))
    if not cases:
        sys.exit(f"no .mil files in {d}")
    for c in cases:
        blob = open(os.path.join(d, c[:-4] + ".weight.bin"), "rb").read()
        try:
            n = run_case(os.path.join(d, c), blob)
        except Mismatch as e:
            sys.exit(f"MISMATCH {c}: {e}")
        print(f"ok {c}: {n} function(s), shapes and blobs agree with coremltools {ct.__version__}")


if __name__ == "__main__":
    main()
