#!/usr/bin/env python3
"""Reference renderings of llama.cpp's chat templates with Python's jinja2, set up as
Hugging Face transformers renders chat templates (sandboxed, trim_blocks, lstrip_blocks,
loop controls, its tojson, raise_exception, strftime_now) and fed what llama.cpp's
common/chat.cpp passes (bos_token, eos_token, enable_thinking, tools when given,
date_string, datetime, chat_template_kwargs, reasoning_strength beside reasoning_effort)
after its message fix-ups (developer -> system, a system message merged into the next one
when the template drops it, tool-call arguments as objects only when the template renders
them, typed content only when it needs it). chat_templates.rs does the same with tandem
and compares byte for byte.

    python3 reference.py [TEMPLATES_DIR]     (default: <repo>/models/llama-cpp/templates)

Writes expected/<template>.<case>.txt (the rendering) or .err (jinja2's error) for every
template and case of cases.json; run scripts/fetch-models.sh llama-cpp first.
"""
import json
import os
import re
import sys
from datetime import datetime, timezone

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))


class Generation(jinja2.ext.Extension):
    """transformers' AssistantTracker: `{% generation %}...{% endgeneration %}` renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def environment(now):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.fromtimestamp(now, timezone.utc).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


MARK_SYSTEM = "<<SYSTEM-MARKER>>"
MARK_USER = "<<USER-MARKER>>"
MARK_ARG = "<<ARG-MARKER>>"


def render(tmpl, ctx):
    try:
        return tmpl.render(**ctx)
    except Exception:  # noqa: BLE001 - a probe only asks whether it renders
        return None


def probe_caps(tmpl, base):
    """What tandem's ChatTemplate probes once per template (template.rs, Caps)."""
    ctx = dict(base, messages=[{"content": MARK_SYSTEM, "role": "system"}, {"content": MARK_USER, "role": "user"}])
    out = render(tmpl, ctx)
    system_role = out is not None and MARK_SYSTEM in out

    out = render(tmpl, dict(base, messages=[{"content": MARK_USER, "role": "user"}]))
    typed = False
    if out is None or MARK_USER not in out:
        out = render(tmpl, dict(base, messages=[{"content": [{"text": MARK_USER, "type": "text"}], "role": "user"}]))
        typed = out is not None and MARK_USER in out

    call = {"function": {"arguments": {"arg": MARK_ARG}, "name": "tool1"}, "id": "call00001", "type": "function"}
    tool = {"function": {"description": "Tool description", "name": "tool1",
                         "parameters": {"properties": {"arg": {"description": "Arg description", "type": "string"}},
                                        "required": ["arg"], "type": "object"}}, "type": "function"}
    msgs = [{"content": "User message", "role": "user"},
            {"content": "", "role": "assistant", "tool_calls": [call]},
            {"content": "Tool response", "role": "tool", "tool_call_id": "call00001"},
            {"content": "The tool response was 'tool response'", "role": "assistant"},
            {"content": "User message", "role": "user"}]
    out = render(tmpl, dict(base, messages=msgs, tools=[tool]))
    object_arguments = out is not None and MARK_ARG in out
    return system_role, typed, object_arguments


def fix_messages(messages, source, caps):
    system_role, typed, object_arguments = caps
    msgs = [dict(m) for m in messages]
    if "<|channel|>" not in source:
        for m in msgs:
            if m.get("role") == "developer":
                m["role"] = "system"
    if not system_role and msgs and msgs[0].get("role") == "system":
        first = msgs.pop(0)
        if msgs:
            msgs[0]["content"] = first["content"] + "\n" + msgs[0]["content"]
    for m in msgs:
        if "tool_calls" in m:
            if m.get("content") is None:
                m["content"] = ""
            calls = []
            for c in m["tool_calls"]:
                c = dict(c, function=dict(c["function"]))
                args = c["function"].get("arguments")
                if object_arguments and isinstance(args, str):
                    c["function"]["arguments"] = json.loads(args)
                elif not object_arguments and not isinstance(args, str):
                    c["function"]["arguments"] = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
                calls.append(c)
            m["tool_calls"] = calls
        if typed and isinstance(m.get("content"), str):
            m["content"] = [{"text": m["content"], "type": "text"}]
    return msgs


def main():
    templates = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "models", "llama-cpp", "templates")
    if not os.path.isdir(templates):
        sys.exit(f"{templates} is missing: run scripts/fetch-models.sh llama-cpp")
    with open(os.path.join(HERE, "cases.json"), encoding="utf-8") as f:
        spec = json.load(f)
    out_dir = os.path.join(HERE, "expected")
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):
        if re.search(r"\.(txt|err)$", old):
            os.remove(os.path.join(out_dir, old))
    now = spec["now"]
    when = datetime.fromtimestamp(now, timezone.utc)
    env = environment(now)
    for name in sorted(os.listdir(templates)):
        if not name.endswith(".jinja"):
            continue
        stem = name[: -len(".jinja")]
        with open(os.path.join(templates, name), encoding="utf-8") as f:
            source = f.read()
        try:
            tmpl = env.from_string(source)
        except Exception as e:  # noqa: BLE001
            for case in spec["cases"]:
                write(out_dir, stem, case["name"], None, f"compile: {e}")
            continue
        base = {"bos_token": spec["bos_token"], "eos_token": spec["eos_token"], "add_generation_prompt": True,
                "enable_thinking": True, "date_string": when.strftime("%d %b %Y"),
                "datetime": when.strftime("%b %d %Y")}
        caps = probe_caps(tmpl, base)
        for case in spec["cases"]:
            ctx = dict(base, add_generation_prompt=case["add_generation_prompt"],
                       enable_thinking=case["enable_thinking"])
            if case.get("tools"):
                ctx["tools"] = case["tools"]
            for k, v in case.get("kwargs", {}).items():
                ctx[k] = v
            if isinstance(ctx.get("reasoning_effort"), str) and ctx["reasoning_effort"]:
                ctx["reasoning_strength"] = ctx["reasoning_effort"]
            ctx["messages"] = fix_messages(case["messages"], source, caps)
            try:
                write(out_dir, stem, case["name"], tmpl.render(**ctx), None)
            except Exception as e:  # noqa: BLE001
                write(out_dir, stem, case["name"], None, f"{type(e).__name__}: {e}")


def write(out_dir, stem, case, text, err):
    path = os.path.join(out_dir, f"{stem}.{case}." + ("txt" if err is None else "err"))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text if err is None else err + "\n")


if __name__ == "__main__":
    main()
