"""Chat stages: masked-loss batches, task mixtures, midtrain/SFT/RL runs, and resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, interrupt_at, one_line_error, run_cli, run_main, weights

from llm_foundry.data.chat import render_conversation, write_conversations
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.data.chat_batches import ChatMixture
from llm_foundry.config.stages import parse_mixture
from llm_foundry.utils.errors import TrainingInterrupted
from llm_foundry.utils.errors import FoundryError

CTX = 192  # a chat example is 40-180 bytes
TINY_CHAT = TINY_MODEL + [f"model.max_seq_len={CTX}"]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A byte-level tiny model (the byte tokenizer reserves the chat tokens), pretrained a few steps."""
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import builtin_corpus, prepare_dataset

    root = tmp_path_factory.mktemp("chat_base")
    prepare_dataset(builtin_corpus()[:12], "byte", root / "data", val_fraction=0.1, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", TINY_CHAT + ["max_steps=4", "batch_size=4", "warmup_steps=2",
                                                            "eval_batches=2", "checkpoint_interval=0"])
    Trainer(model_cfg, train_cfg, root / "data", root / "base", quiet=True).run()
    return root


def _stage_cfg(stage: str, steps: int, **kw):
    from llm_foundry.config.stages import stage_config_from_dict

    raw = {"mixture": {"arithmetic": 2, "count_letters": 1}, "examples_per_task": 40, "val_examples": 8,
           "train": {"max_steps": steps, "batch_size": 2, "warmup_steps": 1, "eval_interval": 0, "eval_batches": 2,
                     "checkpoint_interval": 0, "log_interval": 1, "lr": 1e-3}}
    raw.update(kw)
    return stage_config_from_dict(stage, raw)


# ---------------------------------------------------------------- batches and masks
def test_loss_mask_covers_assistant_tokens_only(tmp_path):
    tok = ByteTokenizer()
    conv = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 6 times 7?"},
            {"role": "assistant", "content": [{"type": "python", "text": "6*7"}, {"type": "python_output", "text": "42"},
                                              {"type": "text", "text": "Answer: 42"}]},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You are welcome."}]
    path = tmp_path / "one.jsonl"
    write_conversations(path, [conv])
    ids, mask = render_conversation(tok, conv)
    mix = ChatMixture(tok, {str(path): 1}, seq_len=len(ids) - 1, loss_on="assistant")
    x, y = mix.batch(0, 2)
    assert x[0].tolist() == ids[:-1]
    trained = (y[0] != -100).tolist()
    assert trained == [bool(m) for m in mask[1:]]
    # exactly the assistant's own tokens: text, python blocks and <|assistant_end|>; never user text or tool output
    trained_text = tok.decode([t for t, m in zip(ids, mask) if m], skip_special=False)
    assert "6*7" in trained_text and "Answer: 42" in trained_text and "You are welcome." in trained_text
    assert "42<|output_end|>" not in trained_text and "Thanks" not in trained_text and "Be brief" not in trained_text
    assert trained_text.count("<|assistant_end|>") == 2
    # loss on all tokens trains everything but padding
    all_mix = ChatMixture(tok, {str(path): 1}, seq_len=len(ids) + 20, loss_on="all")
    x, y = all_mix.batch(0, 1)
    n_real = (x[0] != tok.token_id("<|pad|>")).sum()
    assert int((y[0] != -100).sum()) == n_real


def test_batches_are_a_function_of_seed_and_index():
    tok = ByteTokenizer()
    mix = ChatMixture(tok, {"arithmetic": 1, "spelling": 1}, seq_len=128, examples_per_task=30, seed=3)
    a, b = mix.batch(5, 4), mix.batch(5, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(mix.batch(6, 4)[0], a[0])
    # rows are packed: several whole conversations, each starting with <|bos|>
    assert int((a[0] == tok.token_id("<|bos|>")).sum()) > 4


def test_mixture_weights_and_errors(tmp_path):
    assert parse_mixture("arithmetic=4, spelling=1,text=0.5") == {"arithmetic": 4.0, "spelling": 1.0, "text": 0.5}
    assert parse_mixture("facts") == {"facts": 1.0}
    assert parse_mixture({"facts": 1, "identity": 0}) == {"facts": 1.0}
    for bad in ("arithmetic=x", "arithmetic=-1", "arithmetic=0"):
        with pytest.raises(FoundryError):
            parse_mixture(bad)
    tok = ByteTokenizer()
    only = ChatMixture(tok, {"spelling": 1, "arithmetic": 0}, seq_len=64, examples_per_task=10)
    assert [s.name for s in only.sources] == ["spelling"]
    mix = ChatMixture(tok, {"arithmetic": 3, "spelling": 1}, seq_len=64, examples_per_task=10)
    assert mix.describe()["arithmetic"]["weight"] == 0.75
    with pytest.raises(FoundryError, match="unknown mixture source"):
        ChatMixture(tok, {"nosuch": 1}, seq_len=64)
    with pytest.raises(FoundryError, match="no data folder"):
        ChatMixture(tok, {"text": 1}, seq_len=64)


def test_group_advantages():
    from llm_foundry.training.rl import group_advantages

    assert group_advantages([1, 0, 0, 1]) == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([1, 1, 1]) == [0.0, 0.0, 0.0]  # nothing to prefer
    adv = group_advantages([1, 0, 0, 0], std_normalize=True)
    assert adv[0] > 1.5 and abs(sum(adv)) < 1e-9


# ---------------------------------------------------------------- stages
def test_midtrain_with_text_resumes_exactly(base_model, tmp_path):
    from llm_foundry.training.stages import run_stage

    cfg = _stage_cfg("midtrain", 6, mixture={"arithmetic": 2, "text": 1}, text_data=str(base_model / "data"))
    full = run_stage(base_model / "base", tmp_path / "full", cfg, quiet=True)
    assert full["step"] == 6 and "val_loss" in full
    with pytest.raises(TrainingInterrupted):
        run_stage(base_model / "base", tmp_path / "cut", cfg, quiet=True, on_step=interrupt_at(3))
    state = torch.load(tmp_path / "cut" / "training_state.pt", weights_only=True)
    assert state["step"] == 3
    resumed = run_stage(base_model / "base", tmp_path / "cut", cfg, resume=True, quiet=True)
    assert resumed["step"] == 6 and resumed["val_loss"] == full["val_loss"]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # no step logged twice after the resume
    saved = json.loads((tmp_path / "full" / "stage_config.json").read_text())
    assert saved["loss_on"] == "all" and saved["stage"] == "midtrain"


def test_sft_cli_resumes_and_refuses_bad_input(base_model, tmp_path, capsys):
    out = tmp_path / "sft"
    common = ["--mix", "arithmetic=1,spelling=1", "--quiet", "examples_per_task=30", "val_examples=4",
              "batch_size=2", "warmup_steps=1", "eval_batches=1", "log_interval=1"]
    # the real command line once, in a subprocess
    proc = run_cli("sft", base_model / "base", "--out", out, "--max-steps", "3", *common)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "stage_config.json").read_text())["loss_on"] == "assistant"
    # a finished stage continues to more steps with --resume (settings come from the saved stage)
    proc = run_main(capsys, "sft", base_model / "base", "--out", out, "--resume", "--max-steps", "5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert '"step": 5' in proc.stderr
    one_line_error(run_main(capsys, "sft", base_model / "base", "--out", out, "--max-steps", "3", *common), "--resume")
    one_line_error(run_main(capsys, "sft", base_model / "base", "--out", tmp_path / "x", "--mix", "arithmetic=oops"), "arithmetic")
    one_line_error(run_main(capsys, "sft", base_model / "base", "--out", tmp_path / "x", "nosuchkey=1"), "nosuchkey")
    one_line_error(run_main(capsys, "midtrain", tmp_path / "nosuch", "--out", tmp_path / "y"), "not found")
    one_line_error(run_main(capsys, "sft", base_model / "base", "--out", base_model / "base"), "--out must differ")
    one_line_error(run_main(capsys, "midtrain", base_model / "base", "--out", tmp_path / "z", "--mix", "text=1"), "--data")


def test_rl_logs_reward_and_resumes_exactly(base_model, tmp_path, capsys):
    from llm_foundry.training.rl import run_rl
    from llm_foundry.config.stages import rl_config_from_dict

    cfg = rl_config_from_dict({"tasks": ["arithmetic"], "steps": 4, "prompts_per_step": 2, "group_size": 3,
                               "max_tokens": 12, "examples": 20, "eval_examples": 3, "eval_samples": 2,
                               "kl_coef": 0.1, "lr": 1e-3, "checkpoint_interval": 0, "seed": 5})
    full = run_rl(base_model / "base", tmp_path / "full", cfg, quiet=True)
    assert full["step"] == 4 and {"reward_before", "reward_after", "task_reward_before", "task_reward_after"} <= set(full)
    rewards = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rewards] == [1, 2, 3, 4] and all(0 <= r["reward"] <= 1 for r in rewards)
    with pytest.raises(TrainingInterrupted):
        run_rl(base_model / "base", tmp_path / "cut", cfg, quiet=True, on_step=interrupt_at(2))
    resumed = run_rl(base_model / "base", tmp_path / "cut", cfg, resume=True, quiet=True)
    assert {k: v for k, v in resumed.items() if k != "train_time"} == {k: v for k, v in full.items() if k != "train_time"}
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    one_line_error(run_main(capsys, "rl", base_model / "base", "--out", tmp_path / "bad", "--tasks", "poetry"), "poetry")
    one_line_error(run_main(capsys, "rl", base_model / "base", "--out", tmp_path / "bad", "--group-size", "1"), "group_size")
    one_line_error(run_main(capsys, "rl", base_model / "base", "--out", tmp_path / "bad", "split=heldout"), "rl.split")
    assert json.loads((tmp_path / "full" / "rl_config.json").read_text())["split"] == "stretch"
    # settings typed as a person types them: YAML reads 1e-4 as a string, we read it as a number
    typed = rl_config_from_dict({"lr": "1e-4", "steps": "40", "temperature": 1})
    assert (typed.lr, typed.steps, typed.temperature) == (1e-4, 40, 1.0)
    one_line_error(run_main(capsys, "rl", base_model / "base", "--out", tmp_path / "bad", "lr=fast"), "rl.lr expects float")
