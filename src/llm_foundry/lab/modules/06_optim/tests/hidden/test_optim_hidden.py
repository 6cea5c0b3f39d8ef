"""Module 6 — the optimizers (hidden tests: other hyperparameters, param groups, exact float32
Newton–Schulz, more micro-batches, a long-run EMA). Tolerances as in the visible tests; the float32
iteration below is held to 1e-4 (rounding of five chained float32 matrix products)."""

import inspect
import math

import torch
import torch.nn as nn

from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, learner_line
from llm_foundry.models import MiniLLM
from llm_foundry.training.ema import EMA

from optim import AdamW, Muon, accumulate_gradients, adamw_update, ema_update, muon_update, newton_schulz


def test_adamw_param_groups_and_skipped_parameters():
    torch.manual_seed(10)
    a, b, frozen = torch.randn(5, 3), torch.randn(7), torch.randn(2)
    mine = [t.clone().requires_grad_() for t in (a, b, frozen)]
    theirs = [t.clone().requires_grad_() for t in (a, b, frozen)]

    def groups(ps):
        return [{"params": [ps[0]], "weight_decay": 0.2, "betas": (0.8, 0.99)},
                {"params": [ps[1], ps[2]], "weight_decay": 0.0, "eps": 1e-6}]
    opt = AdamW(groups(mine), lr=5e-3)
    ref = torch.optim.AdamW(groups(theirs), lr=5e-3, foreach=False)
    for step in range(1, 21):
        g = [torch.randn(5, 3), torch.randn(7) * 1e-3]  # tiny gradients: eps matters
        for ps in (mine, theirs):
            ps[0].grad, ps[1].grad, ps[2].grad = g[0].clone(), g[1].clone(), None
        opt.step()
        ref.step()
        for name, p, q in zip(("a", "b", "frozen"), mine, theirs):
            check_close(f"AdamW with two param groups, step {step}, {name}", p.detach(), q.detach(),
                        atol=1e-6, rtol=1e-5, where=adamw_update)
    assert opt.state[mine[0]]["step"] == 20, (
        f"AdamW.step(){learner_line(adamw_update)}: after 20 steps AdamW's state['step'] is {opt.state[mine[0]]['step']}, expected 20: count every step "
        "(the bias correction depends on it)")


def newton_schulz_fp32(g, steps=5, coefficients=(3.4445, -4.7750, 2.0315)):
    a, b, c = coefficients
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_newton_schulz_exact_in_float32():
    torch.manual_seed(11)
    for shape, steps in (((10, 30), 5), ((30, 10), 5), ((16, 16), 5), ((12, 20), 2)):
        g = torch.randn(shape)
        check_close(f"newton_schulz(g of shape {shape}, steps={steps})", newton_schulz(g, steps).float(),
                    newton_schulz_fp32(g, steps), atol=1e-4, rtol=1e-4, where=newton_schulz)
    tiny = torch.full((4, 6), 1e-30)
    out = newton_schulz(tiny)
    assert bool(torch.isfinite(out).all()), (
        f"newton_schulz of a 4×6 matrix of 1e-30{learner_line(newton_schulz)} returned inf or nan: clamp the norm you divide by "
        "(norm().clamp(min=eps))")


def test_muon_float32_steps_exactly():
    """Your Muon against the same update rule in float32, to 1e-6: momentum, Nesterov, decay, scale."""
    torch.manual_seed(12)
    w = torch.randn(20, 12) * 0.1
    p = w.clone().requires_grad_()
    opt = Muon([p], lr=0.05, weight_decay=0.05, momentum=0.9, ns_steps=3, adjust_lr_fn="match_rms_adamw")
    want, buf = w.clone(), torch.zeros_like(w)
    for step in range(1, 5):
        g = torch.randn(20, 12)
        p.grad = g.clone()
        opt.step()
        buf = buf * 0.9 + g * 0.1
        update = g * 0.1 + buf * 0.9
        want = want * (1 - 0.05 * 0.05) - 0.05 * 0.2 * math.sqrt(20) * newton_schulz_fp32(update, 3)
        check_close(f"Muon(lr=0.05, weight_decay=0.05, momentum=0.9, ns_steps=3, "
                    f"adjust_lr_fn='match_rms_adamw'), step {step}", p.detach(), want, atol=1e-5, rtol=1e-4,
                    where=muon_update)


def test_accumulation_with_eight_micro_batches():
    cfg = ModelConfig(vocab_size=40, dim=16, n_layers=2, n_heads=2, max_seq_len=10)
    torch.manual_seed(13)
    x, y = torch.randint(0, 40, (8, 10)), torch.randint(0, 40, (8, 10))
    big = MiniLLM(cfg)
    loss = big(x, y)[1]
    loss.backward()
    small = MiniLLM(cfg)
    small.load_state_dict(big.state_dict())
    got_loss = accumulate_gradients(small, x, y, 8)
    call = "accumulate_gradients(model, x, y, micro_batches=8)"
    for (name, p), q in zip(small.named_parameters(), big.parameters()):
        assert p.grad is not None, f"{call}{learner_line(accumulate_gradients)}: {name}.grad is None after it"
        check_close(f"{call}, {name}.grad", p.grad, q.grad, atol=1e-6, rtol=1e-4, where=accumulate_gradients)
    check_close(f"{call} (the returned loss)", torch.as_tensor(got_loss, dtype=torch.float32), loss.detach(),
                atol=1e-6, rtol=1e-5, where=accumulate_gradients)
    assert not torch.as_tensor(got_loss).requires_grad, f"{call}{learner_line(accumulate_gradients)}: return the loss detached (.detach())"


def test_ema_long_run():
    torch.manual_seed(14)
    model = nn.Linear(4, 4)
    ours = EMA(model, decay=0.95)
    shadow = {n: p.detach().clone().float() for n, p in model.named_parameters()}
    for updates in range(60):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9).add_(torch.randn_like(p))
        ours.update(model)
        ema_update(shadow, model, 0.95, updates)
    for name in shadow:
        check_close(f"ema_update(..., decay=0.95) after 60 updates, shadow[{name!r}]", shadow[name],
                    ours.shadow[name], atol=1e-5, rtol=1e-5, where=inspect.unwrap(ema_update))
