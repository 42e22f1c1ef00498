"""Talk to a running `tandem serve` with the official openai package.

    python3 openai_client.py BASE_URL MODEL API_KEY

Exits non-zero (with the failing assertion) if anything is off.
"""
import sys

import openai
from openai import OpenAI

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=api_key, timeout=120, max_retries=0)

# Models.
ids = [m.id for m in client.models.list()]
assert ids == [model], ids

# Chat, non-streaming, greedy.
msgs = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0)
text = chat.choices[0].message.content
assert chat.choices[0].message.role == "assistant"
assert text, chat
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens > 0 and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

# Chat, streaming: the same text, with the usage chunk.
parts, reason, usage = [], None, None
for chunk in client.chat.completions.create(
    model=model, messages=msgs, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
):
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        parts.append(c.delta.content or "")
        reason = c.finish_reason or reason
assert "".join(parts) == text, ("".join(parts), text)
assert reason == chat.choices[0].finish_reason
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens

# Completions, both ways, with a stop string and max_tokens.
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
assert comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 8, comp
streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True)
    if c.choices
)
assert streamed == comp.choices[0].text, (streamed, comp.choices[0].text)
stop = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"])
assert stop.choices[0].finish_reason == "stop" and " 7" not in stop.choices[0].text, stop

# Sampling parameters and a seed: reproducible.
a = client.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
b = client.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
assert a.choices[0].text == b.choices[0].text

# Log-probabilities, several choices, penalties and logit bias, through the package's types.
lp = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
assert "".join(t.token for t in content) == lp.choices[0].message.content, content
assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content), content
many = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0, n=2,
                                      presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"0": -100})
assert [c.index for c in many.choices] == [0, 1] and many.choices[0].message.content == many.choices[1].message.content, many
cl = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2)
assert len(cl.choices[0].logprobs.tokens) == 4 and len(cl.choices[0].logprobs.top_logprobs[0]) == 2, cl
js = client.chat.completions.create(model=model, messages=msgs, max_tokens=100, temperature=0, response_format={"type": "json_object"})
assert isinstance(__import__("json").loads(js.choices[0].message.content), dict), js
try:
    client.chat.completions.create(model=model, messages=msgs, max_tokens=5, modalities=["text", "audio"])
    raise AssertionError("an unsupported modality was served")
except openai.BadRequestError as e:
    assert "modalities" in str(e)

# A client configured for another model name is served by the one model (as llama-server does).
other = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=5, temperature=0)
assert other.model == model and other.choices[0].message.content, other

# Embeddings: the package asks for base64 and decodes it; the floats say the same.
e = client.embeddings.create(model=model, input=["The cat sat on the mat.", "Stock prices fell sharply."])
vecs = [d.embedding for d in e.data]
assert len(vecs) == 2 and len(vecs[0]) == len(vecs[1]) > 0, [len(v) for v in vecs]
assert all(abs(sum(x * x for x in v) ** 0.5 - 1) < 1e-3 for v in vecs)
assert e.usage.prompt_tokens > 0 and e.usage.total_tokens == e.usage.prompt_tokens, e.usage
floats = client.embeddings.create(model=model, input="The cat sat on the mat.", encoding_format="float").data[0].embedding
assert max(abs(a - b) for a, b in zip(floats, vecs[0])) < 1e-6

# Errors arrive as the package's exceptions.
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=5)
    raise AssertionError("empty messages accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400
try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401

print("openai client: all checks passed")
