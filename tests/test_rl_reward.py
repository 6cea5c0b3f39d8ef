"""`foundry rl --reward module:function`: a user's reward in place of the task checkers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import TINY_MODEL, one_line_error, run_main

CTX = 192
RL = ["steps=2", "prompts_per_step=2", "group_size=2", "max_tokens=6", "examples=10", "eval_examples=2",
      "eval_samples=2", "checkpoint_interval=0"]
REWARDS = '''
def length(prompt, completion):
    """A constant, so the test can see that this function, not the checker, gave every reward."""
    assert isinstance(prompt, str) and isinstance(completion, str)
    return 0.25


def checker(task, completion, answer):
    return 1.0 if answer in completion else 0.5


def words(prompt, completion):
    return "many"


NOT_CALLABLE = 3


def boom(prompt, completion):
    raise ValueError("my bug")
'''


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import builtin_corpus, prepare_dataset

    root = tmp_path_factory.mktemp("reward_base")
    prepare_dataset(builtin_corpus()[:4], "byte", root / "data", val_fraction=0.1, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + [f"model.max_seq_len={CTX}", "max_steps=2", "batch_size=2",
                                                             "warmup_steps=1", "eval_batches=1", "checkpoint_interval=0"])
    Trainer(model_cfg, train_cfg, root / "data", root / "base", quiet=True).run()
    (root / "my_rewards.py").write_text(REWARDS, encoding="utf-8")
    return root


def test_a_reward_from_a_file_scores_every_completion(base_model, tmp_path, capsys):
    """The file's function gives every reward: the log shows its constant, and --resume keeps using it."""
    out = tmp_path / "rl"
    proc = run_main(capsys, "rl", base_model / "base", "--out", out, "--reward", f"{base_model / 'my_rewards.py'}:length",
                    "--quiet", *RL)
    assert proc.returncode == 0, proc.stderr
    rewards = [json.loads(line)["reward"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rewards == [0.25, 0.25]
    evals = json.loads((out / "rl_eval.json").read_text())
    assert evals["before"]["mean_reward"] == 0.25 and evals["after"]["mean_reward"] == 0.25
    assert json.loads((out / "rl_config.json").read_text())["reward"].endswith("my_rewards.py:length")
    proc = run_main(capsys, "rl", base_model / "base", "--out", out, "--resume", "--quiet", "steps=3")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["reward"] for line in (out / "metrics.jsonl").read_text().splitlines()][-1] == 0.25


def test_a_reward_from_a_module_with_the_checkers_signature(base_model, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(base_model))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    out = tmp_path / "rl"
    proc = run_main(capsys, "rl", base_model / "base", "--out", out, "--reward", "my_rewards:checker", "--quiet", *RL)
    assert proc.returncode == 0, proc.stderr
    rewards = [json.loads(line)["reward"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.5 <= r <= 1.0 for r in rewards)


@pytest.mark.parametrize("spec, fragments", [
    ("no_such_module_xyz:f", ("cannot import no_such_module_xyz", "ModuleNotFoundError")),
    ("{dir}/missing.py:f", ("file not found",)),
    ("{dir}/my_rewards.py:absent", ("has no 'absent'",)),
    ("{dir}/my_rewards.py:NOT_CALLABLE", ("is not callable",)),
    ("{dir}/my_rewards.py:words", ("returned 'many'", "not a finite number")),
    ("{dir}/my_rewards.py:boom", ("raised ValueError: my bug",)),
    ("justaname", ("MODULE:FUNCTION",)),
])
def test_bad_rewards_are_one_line(spec, fragments, base_model, tmp_path, capsys):
    spec = spec.format(dir=base_model)
    proc = run_main(capsys, "rl", base_model / "base", "--out", tmp_path / "bad", "--reward", spec, "--quiet", *RL)
    one_line_error(proc, *fragments)
