"""Module 10 — reinforcement learning (visible tests). Run them with `foundry lab test 10`.

First the pieces, on numbers small enough to check by hand: group advantages, the policy-gradient
loss, GAE and PPO's clipped loss. Then a real (tiny) RL run on YOUR MiniLLM of module 5 with YOUR
AdamW of module 6.

The task: after the prompt ``<bos> d`` (d a digit) the answer is the next digit, ``(d + 1) mod 10``,
then ``<end>``. The checker gives 1 for exactly that, 0 otherwise. The "SFT" start model is made in
the test: a few supervised steps on answers that are right only 30 % of the time, so it is
imperfect — right about a third of the time — and RL has room to raise the reward.
"""

import copy

import torch

from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, learner_line

from model import MiniLLM
from optim import AdamW
from rl import (ValueHead, gae, group_advantages, grpo_step, pad_rollouts, policy_and_values, policy_gradient_loss,
                ppo_loss, ppo_step, sample_completions)

PAD, BOS, END, DIGIT0 = 0, 1, 2, 3  # token ids of the task: ten digits are ids 3..12
CFG = ModelConfig(vocab_size=16, dim=32, n_layers=1, n_heads=2, max_seq_len=8)
PROMPTS = [[BOS, DIGIT0 + d] for d in range(10)]


def answer(prompt):
    return [DIGIT0 + (prompt[1] - DIGIT0 + 1) % 10, END]


def reward(prompt, completion):
    """The checker: 1 for exactly the next digit and <end>."""
    return float(list(completion) == answer(prompt))


_START = {}


def start_model():
    """The imperfect "SFT" model (made once, then copied): 150 supervised steps on answers that are
    right 30 % of the time and a random digit otherwise."""
    if "model" not in _START:
        torch.manual_seed(0)
        model = MiniLLM(CFG)
        opt = AdamW(model.parameters(), lr=1e-2)  # (yours: torch's would spend a second importing on its first step)
        gen = torch.Generator().manual_seed(0)
        for _ in range(150):
            d = torch.randint(0, 10, (64,), generator=gen)
            right = torch.rand(64, generator=gen) < 0.3
            other = torch.randint(0, 10, (64,), generator=gen)
            ans = torch.where(right, (d + 1) % 10, other) + DIGIT0
            ids = torch.stack([torch.full_like(d, BOS), d + DIGIT0, ans, torch.full_like(d, END)], 1)
            targets = ids[:, 1:].clone()
            targets[:, 0] = -100  # the prompt's digit is given, not learned
            loss = model(ids[:, :-1], targets)[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
        _START["model"] = model
    return copy.deepcopy(_START["model"])


def mean_reward(model, seed=123, samples=16):
    """The mean reward of ``samples`` completions of each of the 10 prompts (sampled at temperature 1)."""
    gen = torch.Generator().manual_seed(seed)
    comps = sample_completions(model, PROMPTS, samples, 2, END, gen)
    rows = [p for p in PROMPTS for _ in range(samples)]
    return sum(reward(p, c) for p, c in zip(rows, comps)) / len(comps)


# ----------------------------------------------------------------------------------------- the pieces
def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    got = group_advantages(r, 4)
    want = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5])
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, r - r.mean()):
        hint = ("you subtract the mean of the whole batch: each reward is compared with its own group's mean "
                "(the other samples of the same prompt), r.view(-1, group_size)")
    check_close("group_advantages([1,0,0,0, 1,1,1,1, 0,1,0,1], group_size=4)", got, want, where=group_advantages,
                hint=hint)
    got = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, std_normalize=True)
    check_close("group_advantages([1, 0, 0, 0], 4, std_normalize=True)", got,
                torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.4330127 + 1e-4), atol=1e-4, where=group_advantages,
                hint="divide by the group's standard deviation (population: unbiased=False) + 1e-4, as ours")


def test_policy_gradient_loss():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -4.0]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    got = policy_gradient_loss(logp, adv, mask)
    want = torch.tensor(-((-2.0 * 1 - 3.0 * 1) + (-0.5 * -2.0)) / 3)  # = 4/3
    hint = ""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        if torch.allclose(got, -want, atol=1e-5):
            hint = ("the sign is reversed: the loss is −advantage·log p, so minimising it RAISES the log-probability "
                    "of rows with a positive advantage")
        elif torch.allclose(got, want * 3 / 6, atol=1e-5):
            hint = ("you average over all 6 positions: divide by the number of counted tokens, mask.sum() (3), "
                    "or padding and prompt tokens dilute the loss")
    check_close("policy_gradient_loss(logp, advantages=[1, -2], mask with 3 counted tokens)", got, want, atol=1e-5,
                where=policy_gradient_loss, hint=hint)
    got.backward()
    check_close("its gradient with respect to logp", logp.grad,
                torch.tensor([[0.0, -1.0, -1.0], [0.0, 2.0, 0.0]]) / 3, atol=1e-6, where=policy_gradient_loss)


def reference_gae(rewards, values, mask, gamma, lam):
    """GAE row by row, over each row's masked positions (the obvious loops)."""
    adv = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        steps = [t for t in range(rewards.shape[1]) if mask[i, t] > 0]
        running = 0.0
        for k in reversed(range(len(steps))):
            t = steps[k]
            nxt = values[i, steps[k + 1]] if k + 1 < len(steps) else 0.0
            delta = rewards[i, t] + gamma * nxt - values[i, t]
            running = delta + gamma * lam * running
            adv[i, t] = running
    return adv, (adv + values) * mask


def test_gae():
    torch.manual_seed(1)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    rewards = torch.zeros(3, 5)
    rewards[0, 3], rewards[1, 4], rewards[2, 1] = 1.0, 0.0, 1.0
    values = torch.rand(3, 5)
    hint = ("A_t = δ_t + γλ·A_{t+1} with δ_t = r_t + γ·V_{t+1} − V_t, computed from the last step back; V_{t+1} "
            "is 0 after a row's last masked token")
    for gamma, lam in ((1.0, 1.0), (1.0, 0.0), (0.9, 0.8)):
        got_adv, got_ret = gae(rewards, values, mask, gamma, lam)
        want_adv, want_ret = reference_gae(rewards, values, mask, gamma, lam)
        name = {(1.0, 1.0): " (λ = 1: Monte Carlo, A_t = R − V_t)", (1.0, 0.0): " (λ = 0: one-step TD)"}.get((gamma, lam), "")
        check_close(f"gae(..., gamma={gamma}, lam={lam})[0] (the advantages){name}", got_adv, want_adv, atol=1e-5,
                    where=gae, hint=hint)
        check_close(f"gae(..., gamma={gamma}, lam={lam})[1] (the returns, A + V on the mask)", got_ret, want_ret,
                    atol=1e-5, where=gae, hint="the returns the value head learns are the advantages plus the values")


def test_ppo_clipped_loss():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 0.5, 1.5 against advantages +1, +1, -1, -1
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    got = ppo_loss(new, old, adv, mask, clip=0.2)
    # min(r·A, clip(r)·A): 1.2 (clipped), 0.5 (unclipped: the pessimistic one), -0.8 (clipped), -1.5 (unclipped)
    want = torch.tensor(-(1.2 + 0.5 - 0.8 - 1.5) / 4)
    hint = ""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        if torch.allclose(got, torch.tensor(-(1.2 + 0.8 - 0.8 - 1.2) / 4), atol=1e-5):
            hint = ("you use only the clipped term: PPO takes the pessimistic min(r·A, clip(r)·A), so a ratio that "
                    "moved the wrong way is never clipped away")
        elif torch.allclose(got, ppo_reference(-new.detach(), old, adv, mask), atol=1e-5):
            hint = "the ratio is new over old: exp(logprobs − old_logprobs)"
    check_close("ppo_loss(ratios [1.5, 0.5, 0.5, 1.5], advantages [1, 1, -1, -1], clip=0.2)", got, want, atol=1e-5,
                where=ppo_loss, hint=hint)
    got.backward()
    # clipped terms carry no gradient; unclipped ones d(r·A)/dlogp = r·A / 4
    check_close("its gradient with respect to the new log-probabilities", new.grad,
                torch.tensor([[0.0, -0.5 / 4, 0.0, 1.5 / 4]]), atol=1e-6, where=ppo_loss,
                hint="a clipped term (ratio outside [0.8, 1.2] in the direction its advantage pushes) has zero gradient")


def ppo_reference(new, old, adv, mask, clip=0.2):
    r = torch.exp(new - old)
    return -(torch.min(r * adv, r.clamp(1 - clip, 1 + clip) * adv) * mask).sum() / mask.sum()


# ----------------------------------------------------------------------------------------- a real run
def run_rl(step, steps=20):
    """``steps`` RL steps on all 10 prompts (groups of 6) from the start model; the curve and the
    sampled reward before and after."""
    model = start_model()
    before = mean_reward(model)
    torch.manual_seed(2)
    value_head = ValueHead(CFG.dim) if step is ppo_step else None
    params = list(model.parameters()) + (list(value_head.parameters()) if value_head is not None else [])
    opt = AdamW(params, lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(3)
    extra = (value_head,) if value_head is not None else ()
    curve = [step(model, *extra, opt, PROMPTS, reward, group_size=6, max_new_tokens=2, end_id=END, pad_id=PAD,
                  generator=gen) for _ in range(steps)]
    name = "GRPO" if step is grpo_step else "PPO"
    print(f"{name} reward per step: {' '.join(f'{r:.2f}' for r in curve)}")
    after = mean_reward(model)
    print(f"{name}: sampled reward on the 10 prompts {before:.3f} before, {after:.3f} after")
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in curve), (
        f"{step.__name__}{learner_line(step)} returned {curve[:3]}...: return the mean reward of the step's samples")
    assert 0.15 < before < 0.6, f"the start model should be imperfect (reward {before:.2f}): a problem in the test itself"
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert after > before + 0.3 and last > first + 0.2, (
        f"{name}{learner_line(step)} did not raise the reward: sampled reward {before:.3f} before, {after:.3f} after; "
        f"mean per step {first:.3f} over the first 5 steps, {last:.3f} over the last 5. Check the sign of the loss, "
        "that each row's advantage reaches its tokens, and that each step ends with optimizer.step()")
    return model, value_head, curve


def test_grpo_raises_the_reward():
    run_rl(grpo_step)


def test_ppo_with_a_value_head_raises_the_reward_and_learns_the_value():
    model, value_head, curve = run_rl(ppo_step)
    # The value at the position that chooses the answer should now predict the success rate.
    ids, _ = pad_rollouts(PROMPTS, [[DIGIT0]] * 10, PAD)
    with torch.no_grad():
        value = float(policy_and_values(model, value_head, ids[:, :-1])[1][:, 1].mean())
    recent = sum(curve[-5:]) / 5
    print(f"PPO: the value head predicts {value:.3f} at the answer; the last 5 steps' mean reward is {recent:.3f}")
    assert abs(value - recent) < 0.25, (
        f"ppo_step{learner_line(ppo_step)}: after 20 steps the value head predicts {value:.3f} at the answer, but the "
        f"reward there is about {recent:.3f}: train the value head towards the returns (A + V from gae), "
        "vf_coef · ½·mean((V − returns)²) added to the loss")
