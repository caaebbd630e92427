"""The flags `blendrt chat` and `blendrt serve` share, named as vLLM names them, and the Blend
they build: members, chat formats and templates, weights and policy, engine sizing, sampling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blendrt.blend import DEFAULT_MAX_TOKENS, Blend, Member
from blendrt.config import EngineConfig
from blendrt.ops.quant_linear import quantized_linears
from blendrt.policy import POLICIES
from blendrt.truncation import TRUNCATION_MODES

MAX_TEMPLATE_BYTES = 1 << 20  # a chat template file larger than this is refused
#: {flag dest: SamplingParams field}: sampling flags; only those given override a member's
#: generation_config.json defaults.
SAMPLING_FLAGS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_tokens": "max_tokens",
    "sampling_seed": "seed",
}


def parse_member(spec: str) -> Member:
    """ "name=path" -> Member."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {spec!r}")
    return Member(name, path)


def _pairs(specs: Sequence[str], flag: str, what: str) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME={what}, got {spec!r}")
        out[name] = value
    return out


def add_blend_args(parser: argparse.ArgumentParser) -> None:
    members = parser.add_argument_group("members")
    members.add_argument(
        "--chat-format",
        action="append",
        default=[],
        metavar="NAME=FORMAT",
        help="a member's built-in chat format (pygmalion, vicuna, llama-2-chat, chatml); "
        "default: the folder's chat_template",
    )
    members.add_argument(
        "--chat-template",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a member's jinja chat template, from a file (overrides the folder's)",
    )
    members.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="a member's weight in the draw (implies --policy weighted)",
    )
    members.add_argument(
        "--quantization",
        action="append",
        default=[],
        metavar="NAME=SCHEME",
        help="a member's weights quantized at load: int8, int4 (group 128), int4-g32, "
        "int4-g64, int4-g128, with -zp for zero points (GPTQ/AWQ folders load as they are)",
    )
    members.add_argument(
        "--policy",
        choices=POLICIES,
        default=None,
        help="who answers a turn (default: uniform, or weighted when --weight is given)",
    )
    members.add_argument("--seed", type=int, default=None, help="seeds the member choice")
    members.add_argument(
        "--reward-model",
        default=None,
        metavar="PATH",
        help="a sequence-classification folder (e.g. GPT2ForSequenceClassification) that "
        "scores candidate replies; the demo blend uses its bundled one with --best-of",
    )
    members.add_argument(
        "--best-of",
        type=int,
        default=1,
        help="candidates sampled per turn from one shared prefill; the reward model's "
        "best is shown (without one: the most likely, as vLLM's best_of)",
    )
    members.add_argument(
        "--generation-config",
        choices=("auto", "none"),
        default="auto",
        help="auto: a member folder's generation_config.json sampling defaults apply where "
        "a turn sets none; none: ignore them",
    )
    engine = parser.add_argument_group("engine")
    engine.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    engine.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    engine.add_argument(
        "--max-model-len", type=int, default=None, help="caps every member's context window"
    )
    engine.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="fraction of the GPU's total memory the blend may use, weights included "
        "(default 0.9 on CUDA)",
    )
    engine.add_argument("--kv-cache-bytes", type=int, default=None, help="the pool's size")
    engine.add_argument(
        "--kv-cache-dtype",
        default=None,
        choices=("auto", "int8", "fp8_e4m3"),
        help="how the pool stores K/V: auto (the model dtype), or int8 / fp8_e4m3 with a "
        "scale per token and head (about twice the tokens per byte)",
    )
    engine.add_argument(
        "--max-num-seqs", type=int, default=None, help="requests running at once (default 256)"
    )
    engine.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tokens per engine step (default 2048)",
    )
    engine.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-member prefix caching (--no-enable-prefix-caching turns it off)",
    )
    engine.add_argument(
        "--default-max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="the longest reply of a turn that gives no max_tokens (it gets what the "
        f"member's window leaves, at most this; default {DEFAULT_MAX_TOKENS})",
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "sampling (unset: the member's generation_config.json, else the defaults)"
    )
    group.add_argument("--temperature", type=float, default=None)
    group.add_argument("--top-p", type=float, default=None)
    group.add_argument("--top-k", type=int, default=None)
    group.add_argument("--min-p", type=float, default=None)
    group.add_argument("--repetition-penalty", type=float, default=None)
    group.add_argument("--max-tokens", type=int, default=None)
    group.add_argument(
        "--sampling-seed", type=int, default=None, help="seeds sampling (reproducible replies)"
    )
    group.add_argument(
        "--truncation",
        choices=TRUNCATION_MODES,
        default="auto",
        help="auto: drop the oldest messages (in chunks) when the history outgrows the "
        "member's window; disabled: fail instead",
    )


def sampling_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling fields given on the command line, over the members' defaults."""
    return {
        field: getattr(args, dest)
        for dest, field in SAMPLING_FLAGS.items()
        if getattr(args, dest) is not None
    }


def _read_template(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--chat-template: {path} is not a file")
    if file.stat().st_size > MAX_TEMPLATE_BYTES:
        raise ValueError(f"--chat-template: {path} is over {MAX_TEMPLATE_BYTES} bytes")
    return file.read_text(encoding="utf-8")


def configure_members(args: argparse.Namespace, members: Sequence[Member]) -> list[Member]:
    """The members with the --chat-format, --chat-template and --weight flags applied."""
    if not members:
        from blendrt.demo import demo_blend_members

        members = demo_blend_members()
    names = [m.name for m in members]
    formats = _pairs(args.chat_format, "--chat-format", "FORMAT")
    templates = _pairs(args.chat_template, "--chat-template", "PATH")
    weights = _pairs(args.weight, "--weight", "W")
    quantizations = _pairs(args.quantization, "--quantization", "SCHEME")
    for flag, given in (
        ("--chat-format", formats),
        ("--chat-template", templates),
        ("--weight", weights),
        ("--quantization", quantizations),
    ):
        if unknown := sorted(set(given) - set(names)):
            raise ValueError(f"{flag} names unknown members {unknown}; members: {names}")
    if both := sorted(set(formats) & set(templates)):
        raise ValueError(f"give --chat-format or --chat-template for a member, not both: {both}")
    out = []
    for m in members:
        fmt, options, weight = m.chat_format, m.chat_options, m.weight
        if m.name in formats:
            fmt, options = formats[m.name], {}
        if m.name in templates:
            fmt, options = None, {"template": _read_template(templates[m.name])}
        if m.name in weights:
            try:
                weight = float(weights[m.name])
            except ValueError:
                raise ValueError(f"--weight {m.name}: not a number: {weights[m.name]!r}") from None
        quantization = quantizations.get(m.name, m.quantization)
        out.append(Member(m.name, m.path, weight, fmt, options, quantization))
    return out


ENGINE_FLAGS = (
    "device",
    "dtype",
    "kv_cache_bytes",
    "kv_cache_dtype",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_prefix_caching",
)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """EngineConfig from the engine flags given (EngineConfig's defaults for the rest)."""
    given = {name: getattr(args, name) for name in ENGINE_FLAGS}
    return EngineConfig(**{k: v for k, v in given.items() if v is not None})


def build_blend(args: argparse.Namespace, members: Sequence[Member]) -> Blend:
    """The Blend the flags describe (the demo blend when no member is given); prints the
    members and the pool to stderr."""
    demo = not members
    members = configure_members(args, members)
    policy = args.policy or ("weighted" if args.weight else "uniform")
    if args.weight and policy != "weighted":
        raise ValueError(f"--weight needs --policy weighted (got --policy {policy})")
    reward_model = args.reward_model
    if reward_model is None and demo and (args.best_of > 1 or policy == "reward"):
        from blendrt.demo import DEMO_REWARD_DIR

        reward_model = DEMO_REWARD_DIR  # the demo blend's own reward model
    blend = Blend(
        members,
        policy=policy,
        seed=args.seed,
        reward_model=reward_model,
        best_of=args.best_of,
        config=engine_config(args),
        generation_config=args.generation_config,
        default_max_tokens=args.default_max_tokens,
    )
    for name, model in blend.engine.models.items():
        role = f"weight {blend.members[name].weight:g}" if name in blend.members else "scorer"
        params = sum(p.numel() for p in model.model.parameters())
        params += sum(q.in_features * q.out_features for q in quantized_linears(model.model))
        print(
            f"{name}: {model.path} ({model.config.hf_architecture}, {params / 1e6:.1f}M "
            f"parameters, {model.dtype}{model.weight_format}, "
            f"window {blend.engine.max_model_len(name)}, {role})",
            file=sys.stderr,
        )
    stats = blend.stats()
    pool = stats["pool"]
    print(
        f"pool: {pool['num_pages']} pages x {pool['page_bytes']} bytes = "
        f"{pool['num_pages'] * pool['page_bytes'] / 2**20:.1f} MiB on {blend.config.device}; "
        + ", ".join(f"{n} {m['tokens_per_page']} tokens/page" for n, m in stats["members"].items()),
        file=sys.stderr,
    )
    return blend
