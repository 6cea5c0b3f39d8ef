"""Module 7 — the base training loop (hidden tests: no clipping, resuming at other steps and the
calls a resumed run makes, no litter after a failed save)."""

import pytest
import torch

from llm_foundry.lab.testing import check_close, learner_line

from model import MiniLLM  # noqa: F401 — your model, through the visible tests' helpers
from optim import AdamW
from test_trainer import batch_at, by_hand, fresh_model, rng_batch_at, two_groups
from trainer import load_checkpoint, save_checkpoint, train, train_step


def test_grad_clip_zero_means_no_clipping():
    model = fresh_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch_at(3)
    weights, _, _ = by_hand(model, [(x, y)], lr=0.1, clip=0.0)[0]
    loss, norm = train_step(model, opt, x, y, 0.0)
    where = learner_line(train_step)
    assert norm is None, (f"train_step(..., grad_clip=0){where}: returned the norm {norm!r}; with grad_clip=0 "
                          "nothing is clipped and, as in our optimizer_step, no norm is computed: return None")
    for (name, p), w in zip(model.named_parameters(), weights):
        check_close(f"train_step(model, SGD(lr=0.1), x, y, grad_clip=0): {name}", p.detach(), w, atol=1e-5,
                    rtol=1e-4, where=train_step, hint="grad_clip=0 means no clipping at all")


@pytest.mark.parametrize("k", [1, 9])
def test_resume_after_step_k_is_exact_and_asks_for_the_right_steps(tmp_path, k):
    path = tmp_path / "ckpt.pt"
    model = fresh_model(seed=3)
    opt = AdamW(two_groups(model, lr=5e-3))
    schedule = lambda step: 5e-3 * (1 - step / 10)  # noqa: E731 — a linear decay
    whole = train(model, opt, rng_batch_at, 10, lr_at=schedule, grad_clip=0.3,
                  on_step=lambda step, loss: save_checkpoint(path, model, opt, step) if step == k else None)
    torch.manual_seed(1234)
    again = fresh_model(seed=4)
    again_opt = AdamW(two_groups(again, lr=5e-3))
    start = load_checkpoint(path, again, again_opt)
    asked_batches, asked_lrs = [], []

    def get_batch(step):
        asked_batches.append(step)
        return rng_batch_at(step)

    def lr_at(step):
        asked_lrs.append(step)
        return schedule(step)

    rest = train(again, again_opt, get_batch, 10, lr_at=lr_at, grad_clip=0.3, start_step=start)
    where = learner_line(train)
    want = list(range(k, 10))
    assert asked_batches == want, (f"train(..., steps=10, start_step={k}){where}: get_batch was called with the steps "
                                   f"{asked_batches}, expected {want}")
    assert asked_lrs == want, (f"train(..., steps=10, start_step={k}){where}: lr_at was called with the steps "
                               f"{asked_lrs}, expected {want}")
    assert rest == whole[k:], (f"resuming after step {k}{learner_line(load_checkpoint)}: the losses were {rest}, "
                               f"the uninterrupted run's {whole[k:]} (they must be equal bit for bit)")


def test_a_failed_save_leaves_no_litter(tmp_path, monkeypatch):
    model = fresh_model()
    opt = AdamW(model.parameters())
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, opt, 0)

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, model, opt, 1)
    monkeypatch.undo()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["ckpt.pt"], (
        f"after a failed save{learner_line(save_checkpoint)} the folder holds {left}: remove the temporary file "
        "when the save fails (try/finally), or every crash leaves a file behind")
    other = fresh_model()
    assert load_checkpoint(path, other, AdamW(other.parameters())) == 0, "the old checkpoint must still load"
