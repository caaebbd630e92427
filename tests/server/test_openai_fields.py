"""Every OpenAI field is honoured or refused with a 400 naming it: logprobs, n, best_of,
logit_bias, echo, list and token-id prompts, /tokenize, /detokenize, /version; tools and
other unimplemented fields refused; out-of-range values refused at the edge."""

from __future__ import annotations

import http.client
import json

import httpx
import pytest
from conftest import API_KEY

import blendrt

openai = pytest.importorskip("openai")

HELLO = [{"role": "user", "content": "Hello there!"}]
AUTH = {"authorization": f"Bearer {API_KEY}"}


def client(served):
    return openai.OpenAI(base_url=served.base_url + "/v1", api_key=API_KEY, max_retries=0)


def post(served, path: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {**AUTH, "content-type": "application/json"}
        return httpx.post(served.base_url + path, content=body, headers=headers, timeout=60)
    return httpx.post(served.base_url + path, json=body, headers=AUTH, timeout=60)


def test_chat_logprobs_in_openais_layout(served) -> None:
    reply = client(served).chat.completions.create(
        model="ann", messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2
        assert item.top_logprobs[0].token == item.token  # greedy took the most likely
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)
        assert item.bytes == list(item.token.encode())
    plain = client(served).chat.completions.create(
        model="ann", messages=HELLO, max_tokens=5, temperature=0
    )
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_echo_and_leading_spaces(served) -> None:
    tok = served.blend.tokenizer("ann")
    spaced = next(t for t in range(tok.vocab_size) if tok.decode([t]).startswith(" ") and t > 10)
    body = {
        "model": "ann", "prompt": "hello world", "max_tokens": 3, "temperature": 0,
        "logit_bias": {str(spaced): 100}, "logprobs": 1,
    }  # fmt: skip
    reply = post(served, "/v1/completions", body).json()
    choice = reply["choices"][0]
    # Raw text keeps the completion's leading space (a chat reply would not).
    assert choice["text"] == tok.decode([spaced] * 3) and choice["text"].startswith(" ")
    lp = choice["logprobs"]
    assert lp["tokens"] == [tok.decode([spaced])] * 3
    assert lp["text_offset"] == [0, len(lp["tokens"][0]), 2 * len(lp["tokens"][0])]
    echoed = post(served, "/v1/completions", {**body, "echo": True}).json()["choices"][0]
    prompt_ids = tok.encode("hello world")
    assert echoed["text"] == tok.decode(prompt_ids) + choice["text"]
    assert len(echoed["logprobs"]["tokens"]) == len(prompt_ids) + 3
    assert echoed["logprobs"]["token_logprobs"][0] is None
    assert all(v <= 0 for v in echoed["logprobs"]["token_logprobs"][1:])


def test_n_candidates_share_one_prefill(served) -> None:
    c = client(served)
    one = c.chat.completions.create(model="vic", messages=HELLO, max_tokens=6, seed=1)
    three = c.chat.completions.create(model="vic", messages=HELLO, max_tokens=6, seed=1, n=3)
    assert [ch.index for ch in three.choices] == [0, 1, 2]
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # one prompt, prefilled once
    assert 3 <= three.usage.completion_tokens <= 18  # every candidate's tokens
    assert len({ch.message.content for ch in three.choices}) > 1  # sampled apart
    stream = c.chat.completions.create(
        model="vic", messages=HELLO, max_tokens=4, n=2, stream=True, temperature=0
    )
    finished = {}
    for chunk in stream:
        for ch in chunk.choices:
            if ch.finish_reason:
                finished[ch.index] = ch.finish_reason
    assert sorted(finished) == [0, 1]


def test_best_of_returns_the_most_likely(served) -> None:
    body = {"model": "ann", "prompt": "hello", "max_tokens": 4, "best_of": 3, "logprobs": 0,
            "seed": 5}  # fmt: skip
    reply = post(served, "/v1/completions", body).json()
    assert len(reply["choices"]) == 1
    assert reply["usage"]["completion_tokens"] >= 3  # three were sampled
    streamed = post(served, "/v1/completions", {**body, "stream": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "best_of"


def test_list_and_token_id_prompts(served) -> None:
    texts = post(
        served,
        "/v1/completions",
        {"model": "vic", "prompt": ["a b", "c d"], "max_tokens": 2, "n": 2},
    ).json()
    assert [c["index"] for c in texts["choices"]] == [0, 1, 2, 3]
    ids = post(
        served, "/v1/completions", {"model": "vic", "prompt": [[5, 6, 7], [8, 9]], "max_tokens": 2}
    ).json()
    assert len(ids["choices"]) == 2
    one = post(
        served, "/v1/completions", {"model": "vic", "prompt": [5, 6, 7], "max_tokens": 2}
    ).json()
    assert len(one["choices"]) == 1
    bad = post(served, "/v1/completions", {"model": "vic", "prompt": [5, 99999], "max_tokens": 2})
    assert bad.status_code == 400 and "token ids must lie in" in bad.json()["error"]["message"]


def test_tokenize_detokenize_version(served) -> None:
    tok = served.blend.tokenizer("vic")
    r = post(served, "/tokenize", {"model": "vic", "prompt": "hello world"}).json()
    assert r["tokens"] == tok.encode("hello world") and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == served.blend.engine.max_model_len("vic")
    chat = post(served, "/tokenize", {"model": "ann", "messages": HELLO}).json()
    assert chat["tokens"] == served.blend.formats["ann"].render(HELLO)
    text = post(served, "/detokenize", {"model": "vic", "tokens": r["tokens"]}).json()
    assert text["prompt"] == tok.decode(r["tokens"])
    assert post(served, "/tokenize", {"model": "blend", "prompt": "x"}).status_code == 400
    assert post(served, "/detokenize", {"model": "vic", "tokens": [10**6]}).status_code == 400
    assert httpx.get(served.base_url + "/version").json() == {"version": blendrt.__version__}


REFUSED = [
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("json mode", {"response_format": {"type": "json_object"}}, "response_format.type"),
    ("unknown field", {"frobnicate": 1}, "frobnicate"),
    (
        "message name",
        {"messages": [{"role": "user", "content": "hi", "name": "x"}]},
        "messages.0.name",
    ),
    ("tool message", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    (
        "image part",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages.0.content",
    ),
    ("top_logprobs alone", {"top_logprobs": 2}, None),
    ("top_k bool", {"top_k": True}, "top_k"),
    ("seed -1", {"seed": -1}, "seed"),
    ("tiny penalty", {"repetition_penalty": 1e-300}, "repetition_penalty"),
    ("huge penalty", {"repetition_penalty": 1e308}, "repetition_penalty"),
    ("huge top_k", {"top_k": 2**63}, "top_k"),
    ("temperature as text", {"temperature": "1"}, "temperature"),
    ("stop too many", {"stop": ["a"] * 17}, "stop"),
    ("logit_bias key", {"logit_bias": {"abc": 1}}, "logit_bias.abc"),
    ("logit_bias value", {"logit_bias": {"5": 1000}}, "logit_bias.5"),
]


@pytest.mark.parametrize(("case", "extra", "param"), REFUSED, ids=[r[0] for r in REFUSED])
def test_unimplemented_and_out_of_range_fields_are_refused(served, case, extra, param) -> None:
    r = post(served, "/v1/chat/completions", {"model": "ann", "messages": HELLO, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param and error["message"].startswith(param)


def test_non_finite_numbers_are_refused(served) -> None:
    for raw in (b'"temperature": Infinity', b'"top_p": NaN', b'"presence_penalty": -Infinity'):
        body = b'{"model": "ann", "messages": [{"role": "user", "content": "hi"}], ' + raw + b"}"
        r = post(served, "/v1/chat/completions", body)
        assert r.status_code == 400 and "finite" in r.json()["error"]["message"], r.text
    suffix = post(served, "/v1/completions", {"model": "ann", "prompt": "x", "suffix": "y"})
    assert suffix.status_code == 400 and suffix.json()["error"]["param"] == "suffix"


def test_a_non_ascii_key_is_a_401(served) -> None:
    host, port = served.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", "/v1/models")
    conn.putheader("authorization", "Bearer clé-é".encode())  # raw UTF-8 bytes on the wire
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 401 and json.loads(r.read())["error"]["code"] == "invalid_api_key"
