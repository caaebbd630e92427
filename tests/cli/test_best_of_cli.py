"""`blendrt chat --best-of 4` on the bundled demo blend uses the bundled demo reward model:
each turn prints the best of four candidates and their scores; `--policy reward` probes
every member."""

from __future__ import annotations

import re

from blendrt.cli import main


def test_chat_best_of_four_on_the_demo_blend(capsys) -> None:
    argv = ["chat", "--seed", "0", "--sampling-seed", "0", "--best-of", "4"]
    assert main([*argv, "--say", "Hello!", "--say", "Do you like music?"]) == 0
    out, err = capsys.readouterr()
    replies = [line for line in out.splitlines() if re.match(r"^(ann|bob|vic)> ", line)]
    assert len(replies) == 2
    ranked = re.findall(r"\[best of 4; reward ([0-9., ]+)\]", err)
    assert len(ranked) == 2
    for scores in ranked:
        values = [float(v) for v in scores.split(", ")]
        assert len(values) == 4 and values == sorted(values, reverse=True)
    assert "<reward>: " in err and "GPT2ForSequenceClassification" in err


def test_chat_reward_policy_on_the_demo_blend(capsys) -> None:
    argv = ["chat", "--seed", "0", "--sampling-seed", "0", "--policy", "reward"]
    assert main([*argv, "--say", "Hello!"]) == 0
    out, _ = capsys.readouterr()
    assert len([line for line in out.splitlines() if re.match(r"^(ann|bob|vic)> ", line)]) == 1


def test_reward_policy_needs_a_reward_model_on_a_users_blend(tmp_path, capsys) -> None:
    from checkpoints import make_checkpoint

    make_checkpoint(tmp_path / "lee", "LlamaConfig", seed=2, context=256)
    argv = ["chat", f"lee={tmp_path / 'lee'}", "--policy", "reward", "--say", "hi"]
    assert main(argv) == 2
    assert "need a reward_model" in capsys.readouterr().err
