"""Untrusted chat templates cannot hang the server or exhaust its memory: time, loop and
size limits, each hit quickly and reported as a ValueError (a 400 in the server; at load,
a member that cannot load)."""

from __future__ import annotations

import time

import pytest

from blendrt.tokenizer.formats import get_chat_format
from blendrt.tokenizer.template_sandbox import MAX_RENDER_SECONDS, TemplateLimitError
from blendrt.tokenizer.tokenizer import load_tokenizer

LIMITED = {
    "nested ranges": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "repetition": "{{ 'x' * 10**9 }}",
    "repetition reversed": "{{ 1000000000 * 'x' }}",
    "padding": "{{ 'x'.ljust(1000000000) }}",
    "center filter": "{{ 'x'|center(1000000000) }}",
    "percent width": "{{ '%1000000000s' % 'x' }}",
    "format width": "{{ '{:>1000000000}'.format('x') }}",
    "replace growth": "{{ ('y' * 100000).replace('y', 'y' * 100000) }}",
    "power": "{{ 7 ** 100000000 }}",
    "output": "{% for i in range(50000) %}{{ 'z' * 1000 }}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "nested message loops": (
        "{% set ns = namespace(m=messages * 1000) %}"
        "{% for a in ns.m %}{% for b in ns.m %}{% for c in ns.m %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from checkpoints import save_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    save_tiny_tokenizer(folder)
    return load_tokenizer(folder)


@pytest.mark.parametrize("template", list(LIMITED.values()), ids=list(LIMITED))
def test_a_runaway_template_is_stopped_at_load(tok, template: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateLimitError):
        get_chat_format(tok, template=template)
    assert time.monotonic() - start < MAX_RENDER_SECONDS + 1.5


def test_a_template_that_runs_away_only_on_long_histories_refuses_them(tok) -> None:
    """Fine on the load-time probe, over the output limit on a huge history: a ValueError
    for that request, and the format keeps serving short ones."""
    template = (
        "{% for m in messages %}{% for i in range(100) %}{{ m.content }}{% endfor %}{% endfor %}"
    )
    fmt = get_chat_format(tok, template=template)
    huge = [{"role": "user", "content": "w" * 200_000}]
    with pytest.raises(ValueError, match="output passed"):
        fmt.render(huge)
    assert fmt.render([{"role": "user", "content": "hi"}])


def test_ordinary_templates_are_untouched(tok) -> None:
    template = (
        "{% for m in messages %}{{ m.role | upper }}: {{ m.content | trim }}{{ '\\n' }}{% endfor %}"
        "{% for i in range(2) %}-{% endfor %}{{ '%5s' % 'ok' }}{{ 'ab' * 3 }}"
    )
    fmt = get_chat_format(tok, template=template)
    text = fmt.render_text([{"role": "user", "content": " hi "}], add_generation_prompt=False)
    assert text == "USER: hi\n--   okababab"
