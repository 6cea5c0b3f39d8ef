"""Module 7 — the base training loop (visible tests). Run them with `foundry lab test 7`.

Your trainer trains YOUR model (module 5's ``model.py``) with YOUR optimizer (module 6's
``optim.py``) — `foundry lab` copies both from those modules' workspaces (or uses their reference
when you have none). The data is a stream generated here: token ``t`` is followed by ``(5·t + 3) mod
32`` four times in five, and by a random token otherwise, so a model that learns the rule brings
the loss down towards ≈ 1.16 (the random fifth cannot be learned). It starts high — about 31 — because
module 5's model keeps PyTorch's default initialisation (embeddings of norm ≈ sqrt(dim)).

Everything runs in float32 on one CPU thread from fixed seeds, so two runs that do the same
arithmetic give the same losses bit for bit: the resume test asks for exactly that.
"""

import math

import pytest
import torch

from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, learner_line

from model import MiniLLM
from optim import AdamW
from trainer import load_checkpoint, save_checkpoint, train, train_step

CFG = ModelConfig(vocab_size=32, dim=32, n_layers=1, n_heads=2, max_seq_len=16)
BATCH, SEQ = 8, 16


def make_stream(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """The token stream: mostly the rule t -> (5t + 3) mod 32, sometimes a random token."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, generator=g) < 0.2
    random_tokens = torch.randint(0, 32, (n,), generator=g)
    out = [0]
    for i in range(1, n):
        out.append(int(random_tokens[i]) if noise[i] else (5 * out[-1] + 3) % 32)
    return torch.tensor(out)


STREAM = make_stream()


def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step``: a pure function of the step (its own generator), as our loaders do."""
    g = torch.Generator().manual_seed(1000 + step)
    starts = torch.randint(0, len(STREAM) - SEQ - 1, (BATCH,), generator=g)
    rows = torch.stack([STREAM[s:s + SEQ + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def fresh_model(seed: int = 0) -> MiniLLM:
    torch.manual_seed(seed)
    return MiniLLM(CFG)


def two_groups(model, lr=1e-2):
    """Our trainer's layout: matrices with weight decay, vectors (norm gains) without."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1, "lr": lr},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]


def global_norm(grads) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def by_hand(model, batches, lr, clip, zero=True, clip_first=True):
    """SGD steps written out: the weights after each step (and the loss and raw norm of each)."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    copy = fresh_model()
    out, acc = [], None
    for x, y in batches:
        with torch.no_grad():
            for q, p in zip(copy.parameters(), params):
                q.copy_(p)
        copy.zero_grad(set_to_none=True)
        loss = copy(x, y)[1]
        loss.backward()
        grads = [q.grad.detach().clone() for q in copy.parameters()]
        if not zero and acc is not None:
            grads = [a + g for a, g in zip(acc, grads)]
        raw = global_norm(grads)
        scale = min(1.0, clip / (raw + 1e-6)) if clip_first and clip > 0 else 1.0
        acc = [scale * g for g in grads]  # clip_grad_norm_ scales .grad in place: what stays there
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * scale * g
        out.append(([p.detach().clone() for p in params], float(loss.detach()), raw))
    return out


def test_train_step_is_one_clipped_sgd_step():
    """Two steps of plain SGD (so the update is visible): your weights against the same steps by hand."""
    model = fresh_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = [batch_at(0), batch_at(1)]
    clip = 0.1
    want = by_hand(model, batches, lr=0.5, clip=clip)
    stale = by_hand(model, batches, lr=0.5, clip=clip, zero=False)
    unclipped = by_hand(model, batches, lr=0.5, clip=clip, clip_first=False)
    where = learner_line(train_step)
    for i, (x, y) in enumerate(batches):
        call = f"train_step(model, SGD(lr=0.5), x, y, grad_clip={clip}), step {i + 1}"
        result = train_step(model, opt, x, y, clip)
        assert isinstance(result, tuple) and len(result) == 2, (
            f"{call}{where}: expected a tuple (loss, grad_norm), got {type(result).__name__}")
        loss, norm = result
        weights, want_loss, want_norm = want[i]
        assert want_norm > clip, "the test expects the raw gradient norm above the clip"
        check_close(f"{call}: the loss it returns", torch.as_tensor(loss, dtype=torch.float32).detach(),
                    torch.tensor(want_loss), atol=1e-5, rtol=1e-5, where=train_step,
                    hint="return the batch's mean loss, computed before the step")
        for (name, p), w, s, u in zip(model.named_parameters(), weights, stale[i][0], unclipped[i][0]):
            hint = ""
            if i == 1 and torch.allclose(p.detach(), s, atol=1e-5):
                hint = ("the gradient of step 1 was still in .grad at step 2: backward() adds into .grad, so "
                        "clear it (optimizer.zero_grad(set_to_none=True)) after each step")
            elif torch.allclose(p.detach(), u, atol=1e-5):
                hint = ("the update used the unclipped gradient: clip_grad_norm_ must run after backward() "
                        "and before optimizer.step()")
            check_close(f"{call}: {name} after the step", p.detach(), w, atol=1e-5, rtol=1e-4, where=train_step,
                        hint=hint)
        got_norm = float(norm) if norm is not None else math.nan
        hint = ""
        if abs(got_norm - clip) < 1e-4:
            hint = (f"you return {got_norm:.4g}, the clip itself: that is the norm after clipping. Return what "
                    "clip_grad_norm_ returns — the norm before clipping, the one worth logging")
        check_close(f"{call}: the gradient norm it returns", torch.tensor(got_norm), torch.tensor(want_norm),
                    atol=1e-4, rtol=1e-4, where=train_step, hint=hint)


class Recording(AdamW):
    """Your AdamW, noting at each step the gradients' global norm and each group's lr."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.seen.append((global_norm(grads) if grads else 0.0, [g["lr"] for g in self.param_groups]))
        return super().step(closure)


def test_gradients_are_clipped_and_every_group_gets_the_lr():
    model = fresh_model()
    opt = Recording(two_groups(model))
    schedule = lambda step: 1e-3 * (step + 1)  # noqa: E731 — any function of the step
    losses = train(model, opt, batch_at, 8, lr_at=schedule, grad_clip=0.5)
    where = learner_line(train)
    assert len(opt.seen) == 8, f"train(..., steps=8){where}: the optimizer stepped {len(opt.seen)} times, expected 8"
    for step, (norm, lrs) in enumerate(opt.seen):
        assert math.isfinite(norm) and norm > 0, (
            f"train(..., steps=8){where}, step {step}: the optimizer saw gradients of norm {norm}: expected a "
            "finite, non-zero norm (did backward() run before optimizer.step()?)")
        assert norm <= 0.5 * (1 + 1e-4), (
            f"train(..., grad_clip=0.5){where}, step {step}: the optimizer stepped with gradients of norm "
            f"{norm:.4g} > 0.5: the gradients were not clipped before the step")
        want = schedule(step)
        assert all(abs(lr - want) < 1e-12 for lr in lrs), (
            f"train(..., lr_at=lambda step: 1e-3 * (step + 1)){where}, step {step}: the optimizer stepped with "
            f"lr {lrs} (one per param group), expected {want:g} in every parameter group")
    assert len(losses) == 8 and all(isinstance(v, float) and math.isfinite(v) for v in losses), (
        f"train(..., steps=8){where}: expected 8 finite floats, got {losses!r}")


def test_loss_curve_falls():
    model = fresh_model()
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    calls = []
    losses = train(model, opt, batch_at, 40, on_step=lambda step, loss: calls.append((step, loss)))
    where = learner_line(train)
    assert isinstance(losses, list) and len(losses) == 40, (
        f"train(model, AdamW(lr=1e-2), get_batch, steps=40){where}: expected a list of 40 losses, got "
        f"{type(losses).__name__} of length {len(losses) if hasattr(losses, '__len__') else '?'}")
    steps = [s for s, _ in calls]
    hint = ""
    if steps[:1] == [0]:
        hint = " — on_step gets the number of steps done so far (1 after the first step), not the step's index"
    assert steps == list(range(1, 41)), (
        f"train(..., on_step=...){where}: on_step was called with the steps {steps[:5]}...: expected 1, 2, …, 40, "
        f"the steps done so far{hint}")
    assert [l for _, l in calls] == losses, f"train(..., on_step=...){where}: on_step must get each step's loss as returned"
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < 2.0 and last < first / 4, (
        f"train(...){where}: the loss went from {first:.3f} to {last:.3f} (mean of the last 5 of 40 steps); "
        "expected below 2.0 — does each step update the weights?")


def test_checkpoint_round_trip(tmp_path):
    model = fresh_model()
    opt = AdamW(two_groups(model))
    train(model, opt, batch_at, 5)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, opt, 5)
    where = learner_line(save_checkpoint)
    assert path.is_file(), f"save_checkpoint(path, model, optimizer, 5){where}: nothing was written at {path}"
    other = fresh_model(seed=1)
    other_opt = AdamW(two_groups(other))
    step = load_checkpoint(path, other, other_opt)
    assert step == 5, f"load_checkpoint(...){learner_line(load_checkpoint)}: returned {step!r}, expected the saved step 5"
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        check_close(f"load_checkpoint(...): {name}", q.detach(), p.detach(), atol=0, rtol=0, where=load_checkpoint)
    theirs = other_opt.state_dict()["state"]
    assert theirs, (f"save_checkpoint / load_checkpoint{where}: the optimizer's state (AdamW's moments exp_avg, "
                    "exp_avg_sq and its step count) did not come back: save optimizer.state_dict() too, and load it")
    for k, ours in opt.state_dict()["state"].items():
        for key, value in ours.items():
            if torch.is_tensor(value):
                check_close(f"load_checkpoint(...): optimizer state {k}[{key!r}]", theirs[k][key], value, atol=0, rtol=0,
                            where=load_checkpoint)


def rng_batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``batch_at`` but drawing from torch's global random state, as dropout or a data
    augmentation would: a resume is exact only if that state comes back too."""
    starts = torch.randint(0, len(STREAM) - SEQ - 1, (BATCH,))
    rows = torch.stack([STREAM[s:s + SEQ + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def test_interrupted_run_resumes_to_the_same_losses(tmp_path):
    """Train 12 steps at once; and again, saving after step 6 and resuming into a NEW model and
    optimizer: the losses of steps 7–12 must be the same, bit for bit."""
    path = tmp_path / "ckpt.pt"
    model = fresh_model()
    opt = AdamW(two_groups(model, lr=3e-3))
    saved = {}

    def save_at_6(step, loss):
        if step == 6:
            saved["rng"] = torch.get_rng_state()
            saved["moments"] = {k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)}
                                for k, s in opt.state_dict()["state"].items()}
            save_checkpoint(path, model, opt, step)

    schedule = lambda step: 3e-3 * min(1.0, (step + 1) / 4)  # noqa: E731 — a warm-up, to resume mid-schedule
    whole = train(model, opt, rng_batch_at, 12, lr_at=schedule, on_step=save_at_6)
    assert path.is_file(), f"train(..., on_step=...){learner_line(train)}: on_step never got step 6, so nothing was saved"

    torch.manual_seed(99)  # a new process would start from another random state
    again = fresh_model(seed=7)
    again_opt = AdamW(two_groups(again, lr=3e-3))
    start = load_checkpoint(path, again, again_opt)
    assert start == 6, f"load_checkpoint(...){learner_line(load_checkpoint)}: returned {start!r}, expected 6"
    restored_rng = torch.equal(torch.get_rng_state(), saved["rng"])
    restored_moments = bool(again_opt.state_dict()["state"])
    rest = train(again, again_opt, rng_batch_at, 12, lr_at=schedule, start_step=start)
    diff = [abs(a - b) for a, b in zip(whole[6:], rest)]
    if len(rest) == 6 and max(diff) == 0:
        return
    why = ""
    if not restored_moments:
        why = (" The optimizer's state did not come back: AdamW's moments restart from zero, so the resumed "
               "steps differ — save optimizer.state_dict() and load it")
    elif not restored_rng:
        why = (" torch's random state was not restored: this run's batches draw from it (as dropout would), so "
               "after the resume they differ — save torch.get_rng_state() and torch.set_rng_state() it on load")
    raise AssertionError(
        f"resuming from step 6{learner_line(load_checkpoint)}: the losses of steps 7–12 were "
        f"{[round(v, 6) for v in rest]}, the uninterrupted run's {[round(v, 6) for v in whole[6:]]}." + why)


def test_a_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """A save that dies half-way (the disk fills up) must leave the previous checkpoint whole."""
    path = tmp_path / "ckpt.pt"
    model = fresh_model()
    opt = AdamW(model.parameters())
    train(model, opt, batch_at, 3)
    save_checkpoint(path, model, opt, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, opt, batch_at, 4, start_step=3)

    def disk_full(obj, f, *args, **kwargs):  # a fault injected into torch.save: half a file, then the error
        data = b"PK\x03\x04 half a checkpoint"
        if hasattr(f, "write"):
            f.write(data)
        else:
            with open(f, "wb") as out:
                out.write(data)
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", disk_full)
    where = learner_line(save_checkpoint)
    with pytest.raises(OSError):
        save_checkpoint(path, model, opt, 4)
        raise AssertionError(f"save_checkpoint(...){where}: the save failed (disk full) but no error came out: "
                             "let the OSError through, the caller must know the checkpoint was not written")
    monkeypatch.undo()
    other = fresh_model(seed=1)
    try:
        step = load_checkpoint(path, other, AdamW(other.parameters()))
    except Exception as e:
        raise AssertionError(
            f"save_checkpoint(...){where}: a crash during the save left a half-written checkpoint at {path.name} "
            f"({type(e).__name__} when loading it). Write to a temporary file in the same folder and os.replace() "
            "it onto the path: the rename is atomic, the old file stays whole until the new one is complete") from None
    assert step == 3, f"after a failed save, load_checkpoint returned step {step!r}: expected the old checkpoint's 3"
    for name, p in other.named_parameters():
        check_close(f"the old checkpoint after a failed save: {name}", p.detach(), before[name], atol=0, rtol=0,
                    where=save_checkpoint)
