"""The serving flags of `blendrt chat` and `blendrt serve`, named as vLLM names them: each
one changes what it says it changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from fastapi.testclient import TestClient

from blendrt import load_model
from blendrt.cli import build_parser, main
from blendrt.cli.options import build_blend
from blendrt.engine.memory import kv_cache_bytes_for_utilization
from blendrt.tokenizer.chat_template import TemplateChatFormat

GiB = 1 << 30
HELLO = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-members")
    make_checkpoint(root / "jay", "GPTJConfig", seed=1, context=512)
    make_checkpoint(root / "lee", "LlamaConfig", seed=2, context=512)
    make_checkpoint(
        root / "mis", "MistralConfig", seed=3, context=512, sliding_window=64, num_key_value_heads=2
    )
    # lee's folder recommends greedy sampling and 7-token replies.
    (root / "lee" / "generation_config.json").write_text(
        json.dumps({"temperature": 0.0, "max_new_tokens": 7, "top_k": 5})
    )
    return {"jay": root / "jay", "lee": root / "lee", "mis": root / "mis"}


def serve_args(folders: dict, *flags: str, members: tuple[str, ...] = ("jay", "lee")):
    specs = [x for name in members for x in ("--member", f"{name}={folders[name]}")]
    formats = [x for name in members for x in ("--chat-format", f"{name}=chatml")]
    return build_parser().parse_args(["serve", *specs, *formats, "--device", "cpu", *flags])


def blend_of(folders: dict, *flags: str, **kw: object):
    args = serve_args(folders, "--kv-cache-bytes", str(16 << 20), *flags, **kw)
    return build_blend(args, args.member)


def test_max_model_len_caps_every_member(folders) -> None:
    with blend_of(folders) as blend:
        assert {n: blend.engine.max_model_len(n) for n in blend.members} == {"jay": 512, "lee": 512}
    with blend_of(folders, "--max-model-len", "128") as blend:
        windows = {n: blend.engine.max_model_len(n) for n in blend.members}
        assert windows == {"jay": 128, "lee": 128}
        # GPT-J's own config follows the cap too (its rotary tables are sized to it).
        assert blend.engine.models["jay"].config.max_position_embeddings == 128
        turn = blend.prepare(HELLO * 1, member="jay", sampling={"max_tokens": 8})
        assert len(turn.prompt_ids) + 8 <= 128


def test_max_model_len_caps_a_sliding_window_mistral(folders) -> None:
    with blend_of(folders, members=("mis",)) as blend:
        assert blend.engine.max_model_len("mis") == 512
        assert blend.engine.models["mis"].config.release_window == 64
    with blend_of(folders, "--max-model-len", "64", members=("mis",)) as blend:
        assert blend.engine.max_model_len("mis") == 64


def test_gpu_memory_utilization_is_a_fraction_of_the_whole_device() -> None:
    # 80 GiB card, 20 GiB of weights, 1 GiB activation reserve: 0.9 -> 72 - 21 = 51 GiB.
    sizes = dict(total=80 * GiB, free=60 * GiB, used=20 * GiB, reserve=GiB)
    assert kv_cache_bytes_for_utilization(0.9, **sizes) == int(0.9 * 80 * GiB) - 21 * GiB
    assert kv_cache_bytes_for_utilization(0.5, **sizes) == int(0.5 * 80 * GiB) - 21 * GiB
    # Another process holds most of the card: never more than is free.
    busy = {**sizes, "free": 10 * GiB}
    assert kv_cache_bytes_for_utilization(0.9, **busy) == 9 * GiB
    with pytest.raises(
        ValueError, match=r"gpu_memory_utilization 0\.2 of 80\.0 GiB leaves no room"
    ):
        kv_cache_bytes_for_utilization(0.2, **sizes)


def test_gpu_memory_utilization_is_refused_on_the_cpu(folders, capsys) -> None:
    args = ["serve", "--member", f"lee={folders['lee']}", "--device", "cpu"]
    assert main([*args, "--gpu-memory-utilization", "0.5"]) == 2
    assert "gpu_memory_utilization sizes a CUDA pool" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a number
        build_parser().parse_args([*args, "--gpu-memory-utilization", "half"])


def test_max_num_seqs_and_batched_tokens_bound_each_step(folders) -> None:
    flags = ("--max-num-seqs", "2", "--max-num-batched-tokens", "32")
    with blend_of(folders, *flags) as blend:
        assert (blend.config.max_num_seqs, blend.config.max_num_batched_tokens) == (2, 32)
        turns = [blend.prepare(HELLO, member="lee", sampling={"max_tokens": 6}) for _ in range(4)]
        outputs = []
        for turn in turns:
            blend.submit(turn, outputs.append).result()
        reply = blend.chat(HELLO * 3, member="jay", sampling={"max_tokens": 2})
        stats = blend.stats()
    assert stats["peak_requests_running"] <= 2
    # A prompt of more than 32 tokens was prefilled over several steps (chunked).
    assert reply.usage.prompt_tokens > 32 and stats["steps"] >= reply.usage.prompt_tokens // 32


def test_no_enable_prefix_caching_turns_the_cache_off(folders) -> None:
    for flags, hit in (((), True), (("--no-enable-prefix-caching",), False)):
        with blend_of(folders, *flags) as blend:
            assert blend.config.enable_prefix_caching is hit
            first = blend.chat(HELLO * 4, member="lee", sampling={"max_tokens": 2})
            again = blend.chat(HELLO * 4, member="lee", sampling={"max_tokens": 2})
        assert first.usage.cached_prompt_tokens == 0
        assert (again.usage.cached_prompt_tokens > 0) is hit


def test_chat_template_reads_a_members_template_from_a_file(folders, tmp_path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    args = serve_args(folders, "--kv-cache-bytes", str(16 << 20))
    args.chat_format = ["jay=chatml"]  # lee takes the template instead
    args.chat_template = [f"lee={template}"]
    with build_blend(args, args.member) as blend:
        fmt = blend.formats["lee"]
        assert isinstance(fmt, TemplateChatFormat) and fmt.template == template.read_text()
        text = fmt.tokenizer.decode(blend.prepare(HELLO, member="lee").prompt_ids)
        assert text.endswith("<user>hello there, how are you today?\n<assistant>")
    args.chat_template = [f"nobody={template}"]
    with pytest.raises(ValueError, match=r"--chat-template names unknown members \['nobody'\]"):
        build_blend(args, args.member)
    args.chat_template = [f"jay={template}"]
    with pytest.raises(ValueError, match="not both"):
        build_blend(args, args.member)


def test_weight_draws_members_by_weight(folders) -> None:
    with blend_of(folders, "--weight", "jay=1", "--weight", "lee=0", "--seed", "1") as blend:
        assert blend.policy.policy == "weighted"
        assert {blend.prepare(HELLO).member for _ in range(30)} == {"jay"}
    with blend_of(folders, "--weight", "jay=3", "--seed", "1") as blend:  # lee keeps 1
        # the draw is seeded per conversation: 400 different ones
        drawn = [blend.prepare([{"role": "user", "content": f"hi {i}"}]).member for i in range(400)]
        assert 0.65 < drawn.count("jay") / 400 < 0.85
    with pytest.raises(ValueError, match="--weight needs --policy weighted"):
        blend_of(folders, "--weight", "jay=2", "--policy", "uniform")
    with pytest.raises(ValueError, match="not a number"):
        blend_of(folders, "--weight", "jay=lots")


def test_served_model_name_is_the_blends_model_id(folders) -> None:
    from blendrt.server.app import create_app

    with blend_of(folders) as blend:
        client = TestClient(create_app(blend, served_model_name="my-blend"))
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["my-blend", "jay", "lee"]
        body = {"messages": HELLO, "max_tokens": 2}
        assert client.post("/v1/chat/completions", json={**body, "model": "my-blend"}).is_success
        missing = client.post("/v1/chat/completions", json={**body, "model": "blend"})
        assert missing.status_code == 404 and "my-blend" in missing.json()["error"]["message"]
        with pytest.raises(ValueError, match="differ from the member names"):
            create_app(blend, served_model_name="lee")


def test_generation_config_auto_applies_a_folders_sampling_defaults(folders) -> None:
    with blend_of(folders) as blend:
        auto = blend.sampling_for("lee", {})
        assert (auto.temperature, auto.top_k, auto.max_tokens) == (0.0, 5, 7)
        # What a request sets wins over the folder's defaults.
        assert blend.sampling_for("lee", {"temperature": 0.5}).temperature == 0.5
        assert (
            blend.chat(HELLO, member="lee", sampling={"ignore_eos": True}).usage.completion_tokens
            == 7
        )
        assert blend.sampling_for("jay", {}).temperature == 1.0  # no sampling keys there
    with blend_of(folders, "--generation-config", "none") as blend:
        plain = blend.sampling_for("lee", {})
        assert (plain.temperature, plain.top_k, plain.max_tokens) == (1.0, 0, None)


def test_default_max_tokens_bounds_a_reply_without_max_tokens(folders) -> None:
    with blend_of(folders, "--default-max-tokens", "5", "--generation-config", "none") as blend:
        turn = blend.prepare(HELLO, member="jay", sampling={"ignore_eos": True})
        assert turn.sampling.max_tokens == 5
        reply = blend.chat(HELLO, member="jay", sampling={"ignore_eos": True})
        assert reply.usage.completion_tokens == 5


def test_loading_shows_a_progress_bar_per_member(folders, capsys) -> None:
    load_model(folders["lee"], progress=True)
    err = capsys.readouterr().err
    assert "loading lee" in err and "tensors" in err
    load_model(folders["lee"], progress=False)
    assert capsys.readouterr().err == ""


def test_quantization_and_kv_cache_dtype_flags(folders, capsys) -> None:
    flags = ("--quantization", "lee=int4-g32", "--kv-cache-dtype", "int8")
    with blend_of(folders, *flags) as blend:
        assert blend.engine.models["lee"].quantization.name == "int4-g32"
        assert blend.engine.models["jay"].quantization is None
        assert blend.engine.kv.views["lee"].geometry.cache_dtype == "int8"
        assert blend.engine.kv.views["lee"].k_caches[0].dtype == torch.int8
        reply = blend.chat(HELLO, member="lee", sampling={"max_tokens": 4, "ignore_eos": True})
        assert reply.usage.completion_tokens == 4
    assert "int4-g32 weights" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--quantization names unknown members"):
        blend_of(folders, "--quantization", "bob=int8")
    with pytest.raises(ValueError, match="unknown quantization"):
        blend_of(folders, "--quantization", "lee=int3")
    with pytest.raises(SystemExit):
        blend_of(folders, "--kv-cache-dtype", "int4")
