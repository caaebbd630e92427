"""Three tiny random members of different architectures and geometries (the `member_folders`
fixture of tests/conftest.py), and helpers to run an engine over them synchronously.
Imported by tests as `members`."""

from __future__ import annotations

from blendrt import EngineConfig, load_model
from blendrt.engine.engine import LLMEngine
from blendrt.engine.request import RequestOutput
from blendrt.sampling import SamplingParams

#: {member name: (transformers config class, overrides)}: GQA Llama, GPT-J, MHA Llama with
#: another layer count, so tokens per page differ between members.
MEMBER_SPECS = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "gptj": ("GPTJConfig", dict()),
    "mha": ("LlamaConfig", dict(num_key_value_heads=4, num_hidden_layers=3)),
}


def make_engine(member_folders: dict, **config: object) -> LLMEngine:
    models = {name: load_model(folder) for name, (folder, _) in member_folders.items()}
    return LLMEngine(models, EngineConfig(device="cpu", **config))


def run_all(engine: LLMEngine) -> dict[int, list[RequestOutput]]:
    """Steps until every request finished; {request_id: its outputs in order}."""
    outputs: dict[int, list[RequestOutput]] = {}
    for _ in range(100_000):
        if not engine.has_unfinished_requests():
            return outputs
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not finish")


def generated_ids(outputs: list[RequestOutput]) -> list[int]:
    return [t for out in outputs for t in out.new_token_ids]


def greedy(max_tokens: int, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)
