"""Drives the server with the official `openai` Python client: completions and chat, streaming
and not, the diffusion settings as extra fields, and an error. Run by tests/openai_client.rs
with the server's base URL as the only argument; prints one line per check and exits non-zero
on the first failure."""

import sys

import openai
from openai import OpenAI

base_url = sys.argv[1]
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
prompt = sys.argv[2]
expected = sys.argv[3]

models = client.models.list()
assert models.data[0].id == "tiny-llada", models
print("models ok")

done = client.completions.create(model="tiny-llada", prompt=prompt)
assert done.choices[0].text == expected, done
assert done.usage.completion_tokens == len(expected), done.usage
print("completion ok:", done.choices[0].text)

parts = [
    chunk.choices[0].text
    for chunk in client.completions.create(model="tiny-llada", prompt=prompt, stream=True)
]
assert "".join(parts) == expected, parts
print("streamed completion ok:", parts)

fast = client.completions.create(
    model="tiny-llada",
    prompt=prompt,
    extra_body={"policy": "dual", "decode": "threshold:0.5"},
)
assert fast.choices[0].text == expected, fast
print("dual + threshold ok")

chat = client.chat.completions.create(
    model="tiny-llada", messages=[{"role": "user", "content": "?a="}], max_tokens=8
)
assert chat.choices[0].message.role == "assistant", chat
print("chat ok:", repr(chat.choices[0].message.content))

stream = client.chat.completions.create(
    model="tiny-llada",
    messages=[{"role": "user", "content": "?a="}],
    max_tokens=8,
    stream=True,
)
roles = [c.choices[0].delta.role for c in stream if c.choices and c.choices[0].delta.role]
assert roles == ["assistant"], roles
print("streamed chat ok")

try:
    client.completions.create(model="tiny-llada", prompt=prompt, extra_body={"bogus": 1})
    raise SystemExit("an unknown field was accepted")
except openai.BadRequestError as e:
    assert "unknown field" in str(e), e
    print("error ok:", e.status_code)
