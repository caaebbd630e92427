"""Quantized members and a quantized KV pool through the user's front doors: `blendrt chat` and
`blendrt serve` (its own process, real HTTP, JSON and SSE) on the bundled demo blend."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import free_port, serve_subprocess

from blendrt.cli import main

QUANT_FLAGS = (
    "--quantization", "ann=int4-g32-zp", "--quantization", "vic=int8",
    "--kv-cache-dtype", "int8",
)  # fmt: skip


def test_chat_with_quantized_members(capsys) -> None:
    argv = ["chat", "--seed", "0", "--sampling-seed", "0", *QUANT_FLAGS]
    assert main([*argv, "--say", "Hello!", "--say", "Do you like music?"]) == 0
    out, err = capsys.readouterr()
    replies = [line for line in out.splitlines() if line.split(">")[0] in ("ann", "bob", "vic")]
    assert len(replies) == 2 and all(len(r.split(">", 1)[1].strip()) > 0 for r in replies)
    assert "int4-g32-zp weights" in err and "int8 weights" in err


def test_serve_with_quantized_members_json_and_stream() -> None:
    port = free_port()
    proc = serve_subprocess(port, *QUANT_FLAGS)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        for member in ("ann", "bob", "vic"):
            body = {
                "model": member,
                "messages": [{"role": "user", "content": "Tell me about your day."}],
                "max_tokens": 8,
                "ignore_eos": True,
                "temperature": 0,
            }
            done = httpx.post(url, json=body, timeout=60)
            assert done.status_code == 200, done.text
            assert done.json()["usage"]["completion_tokens"] == 8
            chunks: list[dict] = []
            with httpx.stream("POST", url, json=body | {"stream": True}, timeout=60) as r:
                assert r.status_code == 200
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            chunks = [json.loads(line[6:]) for line in lines[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            # the same greedy request: the stream says what the JSON answer said
            assert text == done.json()["choices"][0]["message"]["content"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'blendrt_completion_tokens_total{member="ann"} 16.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    "flag,message", [("ann=int3", "unknown quantization 'int3'"), ("nobody=int8", "nobody")]
)
def test_serve_refuses_a_bad_quantization_flag(flag: str, message: str, capsys) -> None:
    assert main(["serve", "--quantization", flag]) == 2
    assert message in capsys.readouterr().err
