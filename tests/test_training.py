import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from llm_foundry import Trainer
from llm_foundry.config import load_config
from llm_foundry.training.schedule import lr_factor
from llm_foundry.utils.errors import FoundryError

from helpers import TINY_MODEL


def losses(run_dir):
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def train_cmd(data, out, extra):
    return [sys.executable, "-m", "llm_foundry", "train", "--data", str(data), "--out", str(out), "--quiet",
            *TINY_MODEL, "batch_size=8", "max_steps=80", "log_interval=1", "eval_interval=20",
            "checkpoint_interval=0", "warmup_steps=5", *extra]


@pytest.mark.parametrize("extra", [
    ["model.dropout=0.1", "train.ema_decay=0.9"],  # RNG state and EMA must be restored
    ["optimizer=muon", "schedule=wsd"],            # Muon momentum and the wsd schedule too
])
@pytest.mark.slow
def test_interrupted_run_resumes_exactly(shakespeare_data, tmp_path, extra):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    done = subprocess.run(train_cmd(shakespeare_data, ref, extra), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    # Ctrl-C somewhere in the middle of a second, identical run.
    proc = subprocess.Popen(train_cmd(shakespeare_data, cut, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (cut / "metrics.jsonl").exists() and len((cut / "metrics.jsonl").read_text().splitlines()) >= 25:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    stopped = json.loads((cut / "run_config.json").read_text())  # the run folder is usable right away
    assert stopped["train"]["max_steps"] == 80
    interrupted_at = max(losses(cut))
    assert 20 <= interrupted_at < 80

    resumed = subprocess.run(train_cmd(shakespeare_data, cut, extra) + ["--resume"],  # same command + --resume
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(cut) == losses(ref)  # every step's loss, before and after the interruption
    a, b = load_file(ref / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_and_schedule_follows_time(shakespeare_data, tmp_path):
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + ["max_steps=1000000", "time_budget=3", "batch_size=8",
                                                             "eval_interval=0", "checkpoint_interval=0",
                                                             "log_interval=1", "warmup_steps=1"])
    summary = Trainer(model_cfg, train_cfg, shakespeare_data, tmp_path / "run", quiet=True).run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "lr" in r]  # one record per step (log_interval=1)
    # The budget, not max_steps, ended the run: at the first step that reached it (training time,
    # as the trainer counts it; no wall-clock window, so a busy machine only means fewer steps).
    assert 2 <= summary["step"] == steps[-1]["step"] < train_cfg.max_steps
    assert all(r["time"] <= 3 for r in steps[:-1]) and steps[-1]["time"] >= 3 and summary["train_time"] >= 3
    # The cosine follows the share of the budget used: each step's lr is the schedule at the time
    # the step began (the previous record's; times are rounded to 0.01 s): it reaches the floor as time runs out.
    for prev, cur in zip(steps, steps[1:]):
        factor = lr_factor(prev["step"], prev["time"] / 3, train_cfg.schedule, train_cfg.warmup_steps,
                           train_cfg.min_lr_ratio)
        assert cur["lr"] == pytest.approx(factor * train_cfg.lr, abs=0.01 * train_cfg.lr)
    assert [r["lr"] for r in steps[1:]] == sorted((r["lr"] for r in steps[1:]), reverse=True)


def test_training_lowers_val_loss_and_writes_model_dir(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    train_losses = [r["loss"] for r in records if "loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0] < 4.2
    assert train_losses[-1] < train_losses[0] - 0.5
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_state.pt", "run_config.json"):
        assert (trained_run / name).is_file()
    saved = json.loads((trained_run / "run_config.json").read_text())
    assert saved["model"]["dim"] == 64 and saved["train"]["max_steps"] == 60


def test_refuses_to_overwrite_a_run(shakespeare_data, trained_run):
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL)
    before = (trained_run / "model.safetensors").read_bytes()
    with pytest.raises(FoundryError, match="already holds a run"):
        Trainer(model_cfg, train_cfg, shakespeare_data, trained_run, quiet=True)
    assert (trained_run / "model.safetensors").read_bytes() == before


def test_grad_accumulation_counts_every_micro_batch_and_logs_the_mean_loss(shakespeare_data, tmp_path):
    # (That the update equals one batch of all the micro-batches is tested on the step itself:
    # test_checkpoint_atomic.py::test_two_micro_batches_equal_one_batch_of_both.)
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + ["max_steps=3", "batch_size=4", "grad_accum=3",
                                                             "eval_interval=0", "log_interval=1"])
    summary = Trainer(model_cfg, train_cfg, shakespeare_data, tmp_path / "ga", quiet=True).run()
    assert summary["tokens_seen"] == 3 * 4 * 3 * 64
    first = json.loads((tmp_path / "ga" / "metrics.jsonl").read_text().splitlines()[0])
    assert 3.5 < first["loss"] < 5.0  # ~ln(vocab): the mean, not the sum, of the micro-batch losses


class RepeatSource:
    """A batch source that is not a data folder: one short pattern, repeated (easy to learn)."""

    label = "repeat"

    def __init__(self):
        self.val_batches = []

    def tokenizer_for(self, model_dir, resume):
        from llm_foundry.tokenizers import ByteTokenizer

        return ByteTokenizer()

    def open(self, tokenizer, seq_len, cfg, device):
        ids = torch.tensor(tokenizer.encode("abcd" * seq_len)[:seq_len + 1])
        self.xy = (ids[:-1].repeat(cfg.batch_size, 1).to(device), ids[1:].repeat(cfg.batch_size, 1).to(device))
        self.val_batches = [self.xy]

    def batch(self, index):
        return self.xy

    def val_metrics(self, loss):
        return {"loss": loss}

    def describe_val(self, metrics):
        return f"loss {metrics['loss']:.3f}"

    def run_config(self, run):
        return "repeat.json", {"max_steps": run.cfg.max_steps}

    def headline(self, run):
        return "repeat"

    def summary(self, run, last_val):
        return {"step": run.step, "val_loss": last_val["loss"]}


def test_trainer_trains_on_any_batch_source(tmp_path):
    # The Trainer takes its tokenizer, batches, validation and run record from the source (as the chat stages do).
    from llm_foundry.models import load_model_dir

    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + ["max_steps=12", "batch_size=2", "eval_interval=0",
                                                             "warmup_steps=2", "lr=3e-3", "log_interval=4"])
    summary = Trainer(model_cfg, train_cfg, RepeatSource(), tmp_path / "run", quiet=True).run()
    assert summary["step"] == 12 and summary["val_loss"] < 4.0  # from ~ln(vocab) = 5.6
    assert json.loads((tmp_path / "run" / "repeat.json").read_text()) == {"max_steps": 12}
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [4, 8, 12, 12]
    assert load_model_dir(tmp_path / "run").model.cfg.vocab_size == RepeatSource().tokenizer_for(None, False).vocab_size


def test_lr_schedules():
    assert lr_factor(0, 0.0, "cosine", 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 0.0, "cosine", 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(50, 1.0, "cosine", 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 0.5, "wsd", 10, 0.0, 0.2) == 1.0
    assert lr_factor(50, 0.9, "wsd", 10, 0.0, 0.2) == pytest.approx(0.5)
    assert lr_factor(50, 0.99, "constant", 10, 0.0) == 1.0


def test_ema_warms_up_instead_of_averaging_the_init():
    from llm_foundry.training import EMA

    model = torch.nn.Linear(4, 4, bias=False)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(100):
        ema.update(model)
    # After 100 updates the average is close to the trained weights, not 90% init.
    assert torch.allclose(ema.shadow["weight"], torch.ones(4, 4), atol=0.15)
    state = ema.state_dict()
    other = EMA(model, decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 100 and other.decay == 0.999


def _twin_models_with_optimizers():
    import copy

    from llm_foundry import MiniLLM, ModelConfig
    from llm_foundry.config import TrainConfig
    from llm_foundry.training import EMA, build_optimizers

    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=61, dim=40, n_layers=2, n_heads=4, max_seq_len=32))
    twin = copy.deepcopy(model)
    cfg = TrainConfig(weight_decay=0.1)
    return [(m, build_optimizers(m, cfg), EMA(m, 0.9)) for m in (model, twin)]


def test_native_optimizer_step_is_pytorchs_clip_adamw_and_ema(monkeypatch):
    """optimizer_step's one-pass native step = clip_grad_norm_ + AdamW.step + EMA.update,
    in the parameters, the EMA and the optimizer state (so checkpoints are unchanged)."""
    from llm_foundry.kernels import cpu_kernels
    from llm_foundry.training import optim

    if not cpu_kernels.available():
        pytest.skip(f"native kernels unavailable: {cpu_kernels.unavailable_reason()}")
    calls = []
    native = cpu_kernels.adamw_ema_step
    monkeypatch.setattr(cpu_kernels, "adamw_ema_step", lambda *a: calls.append(1) or native(*a))
    (model, opts, ema), (twin, twin_opts, twin_ema) = _twin_models_with_optimizers()
    for step in range(6):
        ids = torch.randint(0, 61, (3, 17))
        for m in (model, twin):
            loss = m(ids[:, :-1], ids[:, 1:])[1]
            (loss * (100.0 if step % 2 else 0.01)).backward()  # clipped on odd steps, not on even ones
        optim.set_lr(opts, 1.0 + step)
        optim.set_lr(twin_opts, 1.0 + step)
        optim.optimizer_step(model, opts, 1.0, ema)
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0, foreach=True)
        for opt in twin_opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        twin_ema.update(twin)
    assert len(calls) == 6 and all(p.grad is None for p in model.parameters())
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for name, shadow in ema.shadow.items():
        torch.testing.assert_close(shadow, twin_ema.shadow[name], atol=1e-6, rtol=1e-5)
    assert ema.updates == twin_ema.updates == 6
    for opt, twin_opt in zip(opts, twin_opts):
        ours, theirs = opt.state_dict(), twin_opt.state_dict()
        assert ours["param_groups"] == theirs["param_groups"]
        for i, state in ours["state"].items():
            assert state.keys() == theirs["state"][i].keys()
            assert state["step"].dtype == theirs["state"][i]["step"].dtype and state["step"].item() == 6
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key], theirs["state"][i][key], atol=1e-7, rtol=1e-5)


def test_native_optimizer_step_leaves_what_it_cannot_do_to_pytorch():
    """A parameter without a gradient (AdamW skips it) sends the whole step to PyTorch,
    before anything was changed."""
    from llm_foundry.training import optim

    (model, opts, ema), _ = _twin_models_with_optimizers()
    ids = torch.randint(0, 61, (3, 17))
    model(ids[:, :-1], ids[:, 1:])[1].backward()
    frozen = model.layers[0].attn_norm.weight
    frozen.grad = None
    before = [p.detach().clone() for p in model.parameters()]
    assert optim._native_adamw_step(model, opts, 1.0, ema) == (False, None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and ema.updates == 0
    assert not any(opt.state for opt in opts)
    optim.optimizer_step(model, opts, 1.0, ema)  # PyTorch's path
    assert torch.equal(frozen, before[[p is frozen for p in model.parameters()].index(True)])
    assert ema.updates == 1 and all(p.grad is None for p in model.parameters())
