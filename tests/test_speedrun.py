"""The speedrun: every stage into one run folder, resumable per stage, and its report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from helpers import one_line_error, run_cli, run_main


# A speedrun small enough for a test: tiny model, a few steps per stage.
TINY_RUN = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=192",
            "pretrain.time_budget=null", "pretrain.max_steps=6", "pretrain.batch_size=4", "pretrain.eval_batches=2",
            "midtrain.train.time_budget=null", "midtrain.train.max_steps=6", "midtrain.train.batch_size=4",
            "midtrain.examples_per_task=40", "midtrain.val_examples=4",
            "sft.train.time_budget=null", "sft.train.max_steps=4", "sft.train.batch_size=4",
            "sft.examples_per_task=40", "sft.val_examples=4",
            "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_tokens=16", "rl.examples=10",
            "rl.eval_examples=2", "rl.eval_samples=2", "eval.examples=4", "eval.max_tokens=24"]


@pytest.mark.slow
def test_speedrun_runs_every_stage_then_skips_them(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY_RUN, "sft.train.compile=true"]  # one stage takes the compiled path
    proc = run_cli("speedrun", "--out", out, "--quiet", *args)
    assert proc.returncode == 0, proc.stderr
    state = json.loads((out / "speedrun_state.json").read_text())
    assert all(state["stages"][s]["done"] for s in ("tokenizer", "pretrain", "midtrain", "sft", "rl", "eval", "report"))
    for folder in ("base", "mid", "sft", "rl"):
        assert (out / folder / "model.safetensors").is_file() and (out / folder / "metrics.jsonl").is_file()
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results) == {"mid", "sft", "rl", "rl_no_tools"}
    assert set(results["rl_no_tools"]) == {"arithmetic", "count_letters"}
    report = (out / "report.md").read_text()
    for heading in ("## Environment", "## Stages", "## Evaluation", "## RL", "## Curves", "## Sample conversations", "## Settings"):
        assert heading in report
    assert "| reward, task | reward, held-out |" in report  # RL: its own task and held-out prompts
    for png in ("pretrain_loss.png", "midtrain_loss.png", "sft_loss.png", "rl_reward.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    # the same command again: everything is done, nothing retrains
    before = (out / "mid" / "model.safetensors").stat().st_mtime_ns
    proc = run_main(capsys, "speedrun", "--out", out, *args)
    assert proc.returncode == 0 and "done already" in proc.stderr
    assert (out / "mid" / "model.safetensors").stat().st_mtime_ns == before
    # other settings in the same folder are refused; the report can be rewritten on its own
    one_line_error(run_main(capsys, "speedrun", "--out", out, *args, "rl.steps=3"), "other settings")
    (out / "report.md").unlink()
    assert run_main(capsys, "report", out).returncode == 0 and (out / "report.md").is_file()


@pytest.mark.slow
def test_interrupted_stage_resumes_from_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    # midtrain long enough to be caught in the middle; it checkpoints every 5 steps
    args = [*TINY_RUN, "midtrain.train.max_steps=200", "midtrain.train.checkpoint_interval=5", "midtrain.train.log_interval=5"]
    cmd = [sys.executable, "-m", "llm_foundry", "speedrun", "--out", str(out), "--quiet", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "mid" / "training_state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    state = json.loads((out / "speedrun_state.json").read_text())
    assert state["stages"]["pretrain"]["done"] and "midtrain" not in {s for s, v in state["stages"].items() if v.get("done")}
    import torch

    cut = torch.load(out / "mid" / "training_state.pt", weights_only=True)["step"]
    assert 0 < cut < 200
    proc = run_main(capsys, "speedrun", "--out", out, "--quiet", *args)
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(line)["step"] for line in (out / "mid" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(5, 201, 5))  # continued from the checkpoint, no step twice
    assert json.loads((out / "speedrun_state.json").read_text())["stages"]["report"]["done"]


def test_speedrun_errors_are_one_line(tmp_path, capsys):
    one_line_error(run_main(capsys, "speedrun", "--preset", "nosuch", "--out", tmp_path / "a"), "nosuch")
    one_line_error(run_main(capsys, "speedrun", "--out", tmp_path / "b", "pretrain.no_such_key=1"), "no_such_key")
    one_line_error(run_main(capsys, "speedrun", "--out", tmp_path / "c", "lr=1e-3"), "ambiguous")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("my files")
    one_line_error(run_main(capsys, "speedrun", "--out", tmp_path / "d"), "not a speedrun folder")
    one_line_error(run_main(capsys, "report", tmp_path / "d"), "neither")


def test_presets_load():
    from llm_foundry.config.speedrun import check_speedrun_config, list_speedrun_presets, load_speedrun_config

    assert {"cpu", "demo"} <= set(list_speedrun_presets())
    for name in list_speedrun_presets():
        parsed = check_speedrun_config(load_speedrun_config(name))
        assert parsed.sft.loss_on == "assistant"


def test_stage_lines_round_figures_for_people():
    from llm_foundry.pipelines.speedrun import _short

    line = _short({"step": 40, "val_loss": 0.960224962234497, "tok_per_s": 13021.51234, "curve": [1.0, 2.0]})
    assert line == "step 40, val_loss 0.9602, tok_per_s 13021.5"
