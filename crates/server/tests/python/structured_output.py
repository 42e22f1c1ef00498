"""Structured output through the official openai package: 50 varied JSON schemas (seeded),
each answer checked by the `jsonschema` package, an independent validator.

    python3 structured_output.py BASE_URL MODEL

Exits non-zero (naming the schema and the answer) if any answer does not validate.
"""
import json
import random
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key="none", timeout=300, max_retries=0)
WORDS = ["alpha", "beta", "gamma", "red", "green", "blue", "north", "south", "cat", "dog"]


def leaf(rng):
    kind = rng.choice(["string", "short_string", "pattern", "integer", "number", "boolean", "null", "enum", "const", "nullable"])
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 12)}
    if kind == "short_string":
        lo = rng.randint(1, 3)
        return {"type": "string", "minLength": lo, "maxLength": lo + rng.randint(0, 5)}
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice(["^[a-z]{2,6}$", "^[A-Z][0-9]{3}$", "^(yes|no)$"])}
    if kind == "integer":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 100)}
    if kind == "number":
        return {"type": "number", "minimum": 0, "maximum": rng.choice([1, 10, 1000])}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(WORDS, rng.randint(2, 4))}
    if kind == "const":
        return {"const": rng.choice(WORDS)}
    return {"type": ["string", "null"], "maxLength": 8}


def schema(rng, depth=0):
    roll = rng.random()
    if depth >= 2 or roll < 0.3:
        return leaf(rng)
    if roll < 0.45:
        return {"type": "array", "items": schema(rng, depth + 1), "minItems": rng.randint(0, 1), "maxItems": rng.randint(1, 3)}
    if roll < 0.55:
        return {"anyOf": [leaf(rng), leaf(rng)]}
    names = rng.sample(["name", "age", "tags", "ok", "colour", "city", "score", "id", "note", "items"], rng.randint(1, 4))
    props = {n: schema(rng, depth + 1) for n in names}
    required = [n for n in names if rng.random() < 0.7] or names[:1]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def top(rng, i):
    s = schema(rng)
    if s.get("type") != "object":
        s = {"type": "object", "properties": {"value": s}, "required": ["value"], "additionalProperties": False}
    if i % 7 == 0:
        # $defs and $ref, as strict OpenAI schemas often have them.
        s = {"$defs": {"item": leaf(rng)}, "type": "object", "additionalProperties": False,
             "properties": {"main": s, "extra": {"$ref": "#/$defs/item"}}, "required": ["main", "extra"]}
    return s


def ask(i):
    rng = random.Random(1000 + i)
    s = top(rng, i)
    r = client.chat.completions.create(
        model=model, temperature=0.7, seed=i, max_tokens=400,
        messages=[{"role": "user", "content": f"Give me an example record number {i} as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "strict": True, "schema": s}},
    )
    return i, s, r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens


failures = []
tokens = 0
with ThreadPoolExecutor(max_workers=4) as pool:
    for i, s, content, reason, n in pool.map(ask, range(50)):
        tokens += n
        try:
            assert reason == "stop", f"finish_reason {reason}"
            jsonschema.validate(json.loads(content), s)
        except Exception as e:  # noqa: BLE001 - report every kind of failure with its schema
            failures.append(f"schema {i}: {e}\n  schema: {json.dumps(s)}\n  answer: {content!r}")
if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"structured output: 50 schemas, {tokens} tokens, all answers valid")
