"""Module 6 — the optimizers (visible tests). Run them with `foundry lab test 6`.

Your optimizers step side by side with PyTorch's, from the same weights and the same gradients.
Tolerances, and why they are not zero:

* AdamW: ``torch.optim.AdamW`` computes the same formula in another order (it divides by
  ``sqrt(1 - β2ᵗ)`` after the square root instead of correcting ``v`` first), so float32 rounding
  alone separates you, by about 1e-7 of a weight per step: we allow 1e-6 + 1e-5·|weight|.
* Muon: ``torch.optim.Muon`` runs its Newton–Schulz iterations in bfloat16 (8 significant bits: each
  product rounds by up to 2⁻⁸ ≈ 0.4 %), you in float32; five quintic iterations carry that to about
  2 % of the update (measured ≤ 2.2 % on these shapes). So each step's update is compared by relative
  size, ‖Δ yours − Δ torch‖ / ‖Δ torch‖ < 5 %; a wrong momentum, scale or orientation is off by 40 %
  or more. (The hidden tests hold your float32 iteration to 1e-4 against a float32 one.)
* Gradient accumulation and the EMA are exact up to float32 summation order: 1e-6.
"""

import inspect
import math

import torch
import torch.nn as nn

from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, learner_line
from llm_foundry.models import MiniLLM
from llm_foundry.training.ema import EMA

from optim import AdamW, Muon, accumulate_gradients, adamw_update, adjusted_lr, ema_update, muon_update, newton_schulz

MUON_TOLERANCE = 0.05


def adamw_pair(shape, lr, weight_decay, seed=0):
    """The same starting weight for your AdamW and torch's."""
    torch.manual_seed(seed)
    w = torch.randn(shape)
    mine, theirs = w.clone().requires_grad_(), w.clone().requires_grad_()
    return (mine, AdamW([mine], lr=lr, weight_decay=weight_decay),
            theirs, torch.optim.AdamW([theirs], lr=lr, weight_decay=weight_decay, foreach=False))


def test_adamw_first_step_moves_each_weight_by_about_lr():
    mine, opt, theirs, ref = adamw_pair((6, 5), lr=0.01, weight_decay=0.0)
    g = torch.randn(6, 5)
    before = mine.detach().clone()
    mine.grad, theirs.grad = g.clone(), g.clone()
    opt.step()
    ref.step()
    moved = (before - mine.detach()).abs().mean().item() / 0.01
    hint = ""
    if math.isfinite(moved) and abs(moved - 1) > 0.1:
        hint = (f"your first step moves a weight by {moved:.3g}·lr on average, AdamW's by ≈ 1·lr "
                "(m̂ / sqrt(v̂) = g / |g| at t = 1): is the bias correction missing? m and v start at 0, "
                "so divide them by 1 − β1ᵗ and 1 − β2ᵗ")
    check_close("AdamW(lr=0.01, weight_decay=0).step() (first step)", mine.detach(), theirs.detach(),
                atol=1e-6, rtol=1e-5, where=adamw_update, hint=hint)


def test_adamw_weight_decay_is_decoupled():
    mine, opt, theirs, ref = adamw_pair((4, 4), lr=0.1, weight_decay=0.1, seed=1)
    want = mine.detach() * (1 - 0.1 * 0.1)
    mine.grad = torch.zeros(4, 4)
    opt.step()
    check_close("AdamW(lr=0.1, weight_decay=0.1).step() with a zero gradient", mine.detach(), want,
                atol=1e-6, rtol=1e-6, where=adamw_update,
                hint="with a zero gradient AdamW only shrinks the weight, p · (1 − lr · weight_decay): "
                     "the decay is decoupled, it never enters m or v")


def test_adamw_matches_torch_step_by_step():
    torch.manual_seed(2)
    mine_model, their_model = nn.Linear(8, 3), nn.Linear(8, 3)
    their_model.load_state_dict(mine_model.state_dict())
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt, ref = AdamW(mine_model.parameters(), **kw), torch.optim.AdamW(their_model.parameters(), foreach=False, **kw)
    x, y = torch.randn(16, 8), torch.randn(16, 3)
    for step in range(1, 11):
        for model, o in ((mine_model, opt), (their_model, ref)):
            o.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            o.step()
        for (name, p), q in zip(mine_model.named_parameters(), their_model.parameters()):
            check_close(f"AdamW(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1), step {step}, {name}",
                        p.detach(), q.detach(), atol=1e-6, rtol=1e-5, where=adamw_update)


def test_newton_schulz_orthogonalises():
    torch.manual_seed(3)
    for shape in ((12, 20), (20, 12)):
        g = torch.randn(shape) * 5
        out = newton_schulz(g)
        call = f"newton_schulz(g of shape {shape}){learner_line(newton_schulz)}"
        assert isinstance(out, torch.Tensor) and out.shape == g.shape, (
            f"{call}: expected a tensor of shape {shape}, got {getattr(out, 'shape', type(out).__name__)}")
        assert bool(torch.isfinite(out).all()), (
            f"{call} returned inf or nan: the singular values grew without bound — divide g by its norm "
            "first, so that every singular value starts at most 1")
        s = torch.linalg.svdvals(out.float())
        assert 0.5 <= s.min() and s.max() <= 1.5, (
            f"{call}: singular values from {s.min():.3g} to {s.max():.3g}; the iteration should bring "
            "every one into about [0.5, 1.5]")
        # torch's own iteration (bfloat16): Muon with lr=1, no momentum, no decay steps by -NS(g)
        w = torch.zeros(shape, requires_grad=True)
        w.grad = g.clone()
        torch.optim.Muon([w], lr=1.0, momentum=0.0, weight_decay=0.0, adjust_lr_fn="original").step()
        want = -w.detach() / math.sqrt(max(1, shape[0] / shape[1]))
        check_close(f"newton_schulz(g of shape {shape})", out.float(), want, atol=0.03, rtol=0.0, where=newton_schulz,
                    hint="tolerance 0.03: torch iterates in bfloat16")


def test_adjusted_lr():
    cases = [((32, 16), None, 0.02 * math.sqrt(2)), ((32, 16), "original", 0.02 * math.sqrt(2)),
             ((16, 48), "original", 0.02), ((32, 16), "match_rms_adamw", 0.02 * 0.2 * math.sqrt(32)),
             ((16, 48), "match_rms_adamw", 0.02 * 0.2 * math.sqrt(48))]
    for shape, fn, want in cases:
        got = adjusted_lr(0.02, shape, fn)
        hint = ""
        if fn == "original" and shape[0] < shape[1]:
            hint = "a wide matrix (A < B) is not scaled down: the factor is sqrt(max(1, A / B))"
        check_close(f"adjusted_lr(0.02, {shape}, {fn!r})", torch.tensor(float(got) if got is not None else math.nan),
                    torch.tensor(want), atol=1e-9, rtol=1e-6, where=adjusted_lr, hint=hint)


def muon_run(shape, adjust_lr_fn, nesterov, steps=5, seed=4):
    """Your Muon and torch's from the same weights, fed the same gradients; after each step yours is
    reset to torch's so that the bfloat16 differences do not pile up. Fails at the first step whose
    update differs by more than MUON_TOLERANCE (relative norm)."""
    torch.manual_seed(seed)
    w = torch.randn(shape) * 0.1
    mine, theirs, other = (w.clone().requires_grad_() for _ in range(3))
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, adjust_lr_fn=adjust_lr_fn)
    opt = Muon([mine], nesterov=nesterov, **kw)
    ref = torch.optim.Muon([theirs], nesterov=nesterov, **kw)
    alt = torch.optim.Muon([other], nesterov=not nesterov, **kw)  # to recognise a swapped update
    call = f"Muon(lr=0.02, weight_decay=0.1, adjust_lr_fn={adjust_lr_fn!r}, nesterov={nesterov}) on {shape}"
    for step in range(1, steps + 1):
        g = torch.randn(shape)
        start = theirs.detach().clone()
        for p in (mine, theirs, other):
            p.grad = g.clone()
        opt.step()
        ref.step()
        alt.step()
        got, want, swapped = (p.detach() - start for p in (mine, theirs, other))
        rel = ((got - want).norm() / want.norm()).item()
        if not rel < MUON_TOLERANCE:
            hint = ""
            if ((got - swapped).norm() / swapped.norm()).item() < MUON_TOLERANCE:
                hint = (f" Your update is that of nesterov={not nesterov}: with Nesterov momentum the step "
                        "orthogonalises g.lerp(buf, momentum), without it the buffer buf itself")
            raise AssertionError(
                f"{call}, step {step}{learner_line(muon_update)}: your update differs from torch.optim.Muon's by {rel:.1%} of its size "
                f"(tolerance {MUON_TOLERANCE:.0%}: bfloat16 vs float32 Newton–Schulz){hint}")
        with torch.no_grad():
            for p in (mine, other):
                p.copy_(theirs)


def test_muon_matches_torch_tall_matrix():
    muon_run((32, 16), None, nesterov=True)


def test_muon_matches_torch_wide_matrix_match_rms_adamw():
    muon_run((16, 48), "match_rms_adamw", nesterov=True)


def test_muon_without_nesterov():
    muon_run((24, 16), "original", nesterov=False)


TINY = ModelConfig(vocab_size=48, dim=16, n_layers=1, n_heads=2, max_seq_len=12)


def grads_of(model):
    return {n: p.grad for n, p in model.named_parameters()}


def test_accumulation_equals_one_big_batch():
    torch.manual_seed(5)
    x, y = torch.randint(0, 48, (8, 12)), torch.randint(0, 48, (8, 12))
    big = MiniLLM(TINY)
    logits, loss = big(x, y)
    loss.backward()
    for k in (1, 4):
        small = MiniLLM(TINY)
        small.load_state_dict(big.state_dict())
        got_loss = accumulate_gradients(small, x, y, k)
        call = f"accumulate_gradients(model, x, y, micro_batches={k})"
        where = learner_line(accumulate_gradients)
        for name, want in grads_of(big).items():
            got = grads_of(small)[name]
            assert got is not None, (f"{call}{where}: {name}.grad is None after it — call backward() on each "
                                     "micro-batch's loss")
            ratio = (got.norm() / want.norm()).item()
            hint = ""
            if k > 1 and abs(ratio - k) < 0.01 * k:
                hint = (f"your gradient is {k} times too large: backward() adds into .grad, so divide each "
                        "micro-batch's loss by micro_batches")
            check_close(f"{call}, {name}.grad", got, want, atol=1e-6, rtol=1e-4, where=accumulate_gradients,
                        hint=hint)
        got_loss = torch.as_tensor(got_loss, dtype=torch.float32)
        hint = ""
        if k > 1 and got_loss.shape == () and abs(got_loss.item() / loss.item() - k) < 0.01 * k:
            hint = f"you return {k} times the batch's mean loss: return the mean of the micro-batch losses"
        check_close(f"{call} (the returned loss)", got_loss, loss.detach(), atol=1e-6, rtol=1e-5,
                    where=accumulate_gradients, hint=hint)


def test_ema_matches_ours():
    torch.manual_seed(6)
    model = nn.Linear(5, 3)
    ours = EMA(model, decay=0.99)
    shadow = {n: p.detach().clone().float() for n, p in model.named_parameters()}
    for updates in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        before = {n: t.clone() for n, t in shadow.items()}
        ours.update(model)
        ema_update(shadow, model, 0.99, updates)
        for name, p in model.named_parameters():
            d = min(0.99, (1 + updates) / (10 + updates))
            hint = ""
            if torch.allclose(shadow[name], before[name] * 0.99 + p.detach() * 0.01, atol=1e-6):
                hint = (f"your shadow moved by 1 − decay = 0.01, ours by 1 − d = {1 - d:.3g}: the warm-up "
                        "d = min(decay, (1 + updates) / (10 + updates)) is missing")
            elif torch.allclose(shadow[name], before[name] * (1 - d) + p.detach() * d, atol=1e-6):
                hint = ("the weights are swapped: the shadow keeps d of itself and takes 1 − d of the parameter")
            check_close(f"ema_update(shadow, model, decay=0.99, updates={updates}), shadow[{name!r}]",
                        shadow[name], ours.shadow[name], atol=1e-6, rtol=1e-6, where=inspect.unwrap(ema_update), hint=hint)
