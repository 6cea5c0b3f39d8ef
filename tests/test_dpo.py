"""`foundry dpo`: preference pairs against a frozen reference; built-in pairs; resume; bad pairs files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, interrupt_at, one_line_error, run_main

from llm_foundry.utils.errors import TrainingInterrupted

CTX = 192


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A byte-level tiny model, pretrained a few steps (the byte tokenizer has the chat tokens)."""
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import builtin_corpus, prepare_dataset

    root = tmp_path_factory.mktemp("dpo_base")
    prepare_dataset(builtin_corpus()[:6], "byte", root / "data", val_fraction=0.1, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + [f"model.max_seq_len={CTX}", "max_steps=4", "batch_size=4",
                                                             "warmup_steps=2", "eval_batches=2", "checkpoint_interval=0"])
    Trainer(model_cfg, train_cfg, root / "data", root / "base", quiet=True).run()
    return root


def _dpo_cfg(steps: int, **kw):
    from llm_foundry.config.stages import dpo_config_from_dict

    raw = {"examples_per_task": 40, "val_pairs": 8, "train": {"max_steps": steps, "batch_size": 2, "warmup_steps": 1,
                                                               "eval_interval": 0, "checkpoint_interval": 0, "log_interval": 1,
                                                               "lr": 1e-3}}
    raw.update(kw)
    return dpo_config_from_dict(raw)


def test_builtin_pairs_answer_right_and_wrong():
    from llm_foundry.eval.answers import score_answer
    from llm_foundry.training.dpo import builtin_pairs, wrong_answer

    pairs = builtin_pairs(["arithmetic", "spelling"], 5, split="train", seed=3, lang="en")
    assert len(pairs) == 10
    for p, task in zip(pairs, ["arithmetic"] * 5 + ["spelling"] * 5):
        assert p.prompt[-1]["role"] == "user" and p.chosen != p.rejected
        if isinstance(p.chosen, list):  # the calculator's reply against a wrong guess without it
            assert p.chosen[0]["type"] == "python" and isinstance(p.rejected, str) and p.rejected.startswith("Answer: ")
            answer = p.chosen[1]["text"]
        else:
            answer = p.chosen
        assert score_answer(task, p.rejected, answer) == 0.0
    rng = random.Random(0)
    assert all(wrong_answer("7", rng) != "7" and int(wrong_answer("7", rng)) >= 0 for _ in range(50))
    assert all(len(w) == 9 and w != "a-p-p-l-e" for w in (wrong_answer("a-p-p-l-e", rng) for _ in range(50)))


def test_dpo_resumes_exactly_and_keeps_the_reference_frozen(base_model, tmp_path):
    from llm_foundry.models.model_dir import read_weights
    from llm_foundry.training.dpo import DPO_CONFIG_FILE, dpo_trainer

    cfg = _dpo_cfg(6)
    full = dpo_trainer(base_model / "base", tmp_path / "full", cfg, quiet=True).run()
    assert full["step"] == 6 and full["before"]["reward_margin"] == 0.0 and "val_reward_accuracy" in full
    with pytest.raises(TrainingInterrupted):
        dpo_trainer(base_model / "base", tmp_path / "cut", cfg, quiet=True).run(on_step=interrupt_at(3))
    resumed = dpo_trainer(base_model / "base", tmp_path / "cut", cfg, resume=True, quiet=True).run()
    assert {k: v for k, v in resumed.items() if k != "train_time"} == {k: v for k, v in full.items() if k != "train_time"}
    a, b = read_weights(tmp_path / "full")[0], read_weights(tmp_path / "cut")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "full" / DPO_CONFIG_FILE).read_text())
    assert saved["beta"] == 0.1 and saved["data"] is None


def test_dpo_cli_on_a_pairs_file_chat_and_plain(base_model, tmp_path, capsys):
    pairs = [{"prompt": "What is 2+2?", "chosen": "Answer: 4", "rejected": "Answer: 5"},
             {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
              "chosen": "Hi!", "rejected": "Go away."}] * 5
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    out = tmp_path / "dpo"
    proc = run_main(capsys, "dpo", base_model / "base", "--data", data, "--out", out, "--max-steps", "3", "--quiet",
                    "dpo.beta=0.2", "train.batch_size=2", "train.eval_interval=0")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "dpo_config.json").read_text())
    assert saved["beta"] == 0.2 and saved["pairs"] == 8  # a fifth (2 of 10) held out
    proc = run_main(capsys, "dpo", base_model / "base", "--out", out, "--resume", "--max-steps", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    # with LoRA: adapters are trained and saved beside the base weights
    pytest.importorskip("peft")
    proc = run_main(capsys, "dpo", base_model / "base", "--data", data, "--out", tmp_path / "lora", "--max-steps", "2",
                    "--quiet", "train.lora_rank=4", "train.batch_size=2", "train.eval_interval=0")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()


def test_bad_pairs_files_are_one_line_with_the_line_number(base_model, tmp_path, capsys):
    good = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}
    cases = {
        "missing": ([good, {"prompt": "Hi?", "chosen": "Hello."}], (":2:", "missing field 'rejected'")),
        "prompt": ([good, good, {"prompt": 3, "chosen": "a", "rejected": "b"}], (":3:", "'prompt' must be a string")),
        "json": (None, (":1:", "not valid JSON")),
    }
    for name, (records, fragments) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("{oops\n" if records is None else "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        proc = run_main(capsys, "dpo", base_model / "base", "--data", path, "--out", tmp_path / "bad", "--quiet")
        one_line_error(proc, f"{name}.jsonl", *fragments)
    one_line_error(run_main(capsys, "dpo", base_model / "base", "--out", tmp_path / "bad", "beta=0"), "dpo.beta")
    one_line_error(run_main(capsys, "dpo", base_model / "base", "--out", tmp_path / "bad", "tasks=poetry"), "poetry")
    one_line_error(run_main(capsys, "dpo", base_model / "base", "--out", base_model / "base"), "--out must differ")


@pytest.mark.slow
def test_dpo_raises_heldout_preference_accuracy_and_margin_over_the_sft_model(base_model, tmp_path):
    """SFT (200 steps), then DPO on the built-in pairs (60 steps): on 128 held-out pairs (held-out
    templates, numbers and words) the model prefers the correct answer more often than the SFT model
    did, and the reward margin, 0 for the SFT model by definition, is positive.

    Measured once (2-core CPU, a base of 12 corpus documents): preference accuracy 0.867 -> 0.906,
    reward accuracy 0.883, margin 4.27, held-out DPO loss 0.693 -> 0.226."""
    from llm_foundry.config.stages import stage_config_from_dict
    from llm_foundry.training.dpo import dpo_trainer
    from llm_foundry.training.stages import run_stage

    tasks = {"arithmetic": 1, "count_letters": 1, "spelling": 1}
    sft = stage_config_from_dict("sft", {"mixture": tasks, "examples_per_task": 400, "val_examples": 0, "lang": "en", "train": {
        "max_steps": 200, "batch_size": 8, "warmup_steps": 5, "lr": 3e-3, "eval_interval": 0, "checkpoint_interval": 0}})
    run_stage(base_model / "base", tmp_path / "sft", sft, quiet=True)
    cfg = _dpo_cfg(60, tasks=",".join(tasks), examples_per_task=200, val_pairs=128, train={
        "max_steps": 60, "batch_size": 8, "warmup_steps": 2, "lr": 1e-3, "eval_interval": 0, "checkpoint_interval": 0})
    summary = dpo_trainer(tmp_path / "sft", tmp_path / "dpo", cfg, quiet=True).run()
    before = summary["before"]
    assert summary["val_preference_accuracy"] > before["preference_accuracy"]
    assert summary["val_reward_margin"] > 0 and summary["val_reward_accuracy"] > 0.5
    assert summary["val_loss"] < before["loss"]
