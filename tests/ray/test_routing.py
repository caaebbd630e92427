"""The parts of the Ray Serve deployment that need no Ray (they run everywhere): the
conversation key, rendezvous placement with its bounded-load rule, a replica running the
OpenAI app in-process, the options, `blendrt serve --ray` flags, and the import graph."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter

import pytest

from blendrt.ray_serve.asgi_call import ForwardedRequest, call_asgi
from blendrt.ray_serve.config import RayServeOptions, from_serve_args
from blendrt.ray_serve.keys import conversation_key
from blendrt.ray_serve.placement import bounded_order, rank

CHAT = "/v1/chat/completions"


def key(body: dict, headers: list | None = None, path: str = CHAT) -> str | None:
    return conversation_key(path, headers or [], json.dumps(body).encode())


def test_the_key_is_the_header_else_user_else_the_conversation_start() -> None:
    first = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    later = [*first, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    assert key({"messages": first}) == key({"messages": later}) is not None  # every turn
    other = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "yo"}]
    assert key({"messages": other}) != key({"messages": first})
    assert key({"messages": first, "user": "ann"}) == key({"messages": other, "user": "ann"})
    header = [(b"x-conversation-id", b"c1")]
    assert key({"messages": first, "user": "ann"}, header) == "id:c1"
    assert key({"prompt": "once upon a time"}, path="/v1/completions").startswith("prompt:")
    assert key({"messages": first}, path="/health") is None
    assert conversation_key(CHAT, [], b"not json") is None  # the replica answers the 400


def test_rendezvous_placement_moves_only_what_it_must() -> None:
    keys = [f"k{i}" for i in range(2000)]
    three = {k: rank(k, ["a", "b", "c"])[0] for k in keys}
    assert set(Counter(three.values())) == {"a", "b", "c"}
    assert min(Counter(three.values()).values()) > 500  # about a third each
    two = {k: rank(k, ["a", "c"])[0] for k in keys}  # b left
    assert all(two[k] == three[k] for k in keys if three[k] != "b")
    four = {k: rank(k, ["a", "b", "c", "d"])[0] for k in keys}  # d joined
    moved = [k for k in keys if four[k] != three[k]]
    assert all(four[k] == "d" for k in moved) and 300 < len(moved) < 700


def test_bounded_load_spills_in_the_keys_own_order() -> None:
    ranked = ["a", "b", "c"]
    assert bounded_order(ranked, {"a": 5, "b": 2, "c": 1}, 4) == ["a", "b", "c"]
    assert bounded_order(ranked, {"a": 6, "b": 2, "c": 1}, 4) == ["b", "a", "c"]
    assert bounded_order(ranked, {"a": 9, "b": 8, "c": 1}, 4) == ["c", "a", "b"]
    assert bounded_order(ranked, {"a": None, "b": 3, "c": 3}, 0) == ["b", "c", "a"]


def test_a_replica_runs_the_app_and_a_closed_stream_disconnects_it() -> None:
    seen: list[str] = []

    async def app(scope: dict, receive, send) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        seen.append((await receive())["type"])  # waits for the disconnect

    async def run() -> list[dict]:
        request = ForwardedRequest("POST", CHAT, body=b"ping")
        stream = call_asgi(app, request)
        messages = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()  # the ingress stopped reading
        return messages

    start, body = asyncio.run(run())
    assert start["status"] == 200 and body["body"] == b"ping"
    assert seen == ["http.disconnect"]


def test_options_and_serve_run_arguments() -> None:
    assert RayServeOptions().autoscaling_config() is None
    scaled = RayServeOptions(replicas=2, min_replicas=1, max_replicas=4)
    assert scaled.autoscaling_config()["target_ongoing_requests"] == 8.0
    assert RayServeOptions(router="pow2").router_config() == {}
    with pytest.raises(ValueError):
        RayServeOptions(replicas=5, max_replicas=4)
    with pytest.raises(ValueError):
        RayServeOptions(router="random")
    opts = from_serve_args({"replicas": "3", "blend_args": "--device cpu", "max_replicas": "4"})
    assert opts.replicas == 3 and opts.blend_args == ["--device", "cpu"]
    assert opts.max_replicas == 4


def test_serve_flags_and_no_ray_at_import() -> None:
    code = (
        "import sys, blendrt.cli, blendrt.ray_serve\n"
        "from blendrt.ray_serve import RayServeOptions, conversation_key\n"
        "import blendrt.ray_serve.workload, blendrt.ray_serve.asgi_call\n"
        "a = blendrt.cli.build_parser().parse_args(\n"
        "    ['serve', '--ray', '--replicas', '2', '--max-replicas', '4', '--routing', 'pow2'])\n"
        "assert a.ray and a.replicas == 2 and a.max_replicas == 4 and a.routing == 'pow2'\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # Without Ray (a runtime-only install) every module still imports (test_fresh_install).
    blocked = (
        "import sys, importlib, pkgutil\n"
        "sys.modules['ray'] = None\n"
        "import blendrt.ray_serve as rs\n"
        "for m in pkgutil.walk_packages(rs.__path__, 'blendrt.ray_serve.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    subprocess.run([sys.executable, "-c", blocked], check=True)
