"""Module 10 — reinforcement learning (hidden tests: edge cases of the pieces, PPO on-policy equals the
policy gradient, and a step that must learn nothing when every group is all right or all wrong)."""

import torch

from llm_foundry.lab.testing import check_close, learner_line

from optim import AdamW
from rl import gae, group_advantages, grpo_step, policy_gradient_loss, ppo_loss
from test_rl import END, PAD, PROMPTS, reward, reference_gae, start_model


def test_edge_cases_of_the_advantages_and_the_loss():
    check_close("group_advantages([1, 1, 1, 0, 0, 0], 3) (two groups that all agree)",
                group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), 3), torch.zeros(6),
                where=group_advantages, hint="a group whose samples all scored the same has nothing to prefer: zeros")
    check_close("group_advantages([0.5, 1.5], 2, std_normalize=True)",
                group_advantages(torch.tensor([0.5, 1.5]), 2, std_normalize=True),
                torch.tensor([-0.5, 0.5]) / (0.5 + 1e-4), atol=1e-4, where=group_advantages)
    got = policy_gradient_loss(torch.full((2, 3), -1.0), torch.tensor([1.0, 1.0]), torch.zeros(2, 3))
    check_close("policy_gradient_loss with an all-zero mask (no completion token at all)", got, torch.tensor(0.0),
                where=policy_gradient_loss, hint="divide by mask.sum().clamp_min(1): 0, not nan")


def test_gae_on_longer_rows_with_discounting():
    torch.manual_seed(5)
    mask = torch.zeros(4, 9)
    for i, (a, b) in enumerate(((0, 9), (3, 4), (2, 7), (5, 9))):
        mask[i, a:b] = 1.0
    rewards = torch.randn(4, 9) * mask
    values = torch.randn(4, 9)
    got, ret = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    want, want_ret = reference_gae(rewards, values, mask, 0.95, 0.9)
    check_close("gae on 4 rows of 9 positions (one, four, five and nine masked tokens), gamma=0.95, lam=0.9", got,
                want, atol=1e-5, where=gae)
    check_close("... the returns", ret, want_ret, atol=1e-5, where=gae)


def test_on_policy_ppo_is_the_policy_gradient():
    torch.manual_seed(6)
    logp = torch.randn(3, 5).requires_grad_()
    adv = torch.randn(3, 5)
    mask = (torch.rand(3, 5) > 0.3).float()
    got = ppo_loss(logp, logp.detach(), adv, mask)
    want = -(adv * mask).sum() / mask.sum()
    check_close("ppo_loss(logp, old_logprobs=logp) (ratio 1: nothing clipped)", got, want, atol=1e-5, where=ppo_loss)
    got.backward()
    check_close("its gradient: -A / (counted tokens), as the policy gradient's", logp.grad, -adv * mask / mask.sum(),
                atol=1e-6, where=ppo_loss)


def test_a_step_where_every_group_agrees_learns_nothing():
    model = start_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = AdamW(model.parameters(), lr=0.5, weight_decay=0.0)  # a zero gradient moves no weight
    gen = torch.Generator().manual_seed(9)
    mean = grpo_step(model, opt, PROMPTS[:4], lambda p, c: 1.0, group_size=4, max_new_tokens=2, end_id=END,
                     pad_id=PAD, generator=gen)
    moved = max(float((v - before[k]).abs().max()) for k, v in model.state_dict().items())
    assert mean == 1.0 and moved < 1e-7, (
        f"grpo_step{learner_line(grpo_step)} with a reward of 1 for every sample moved a weight by {moved:.3g} "
        f"(returned {mean}): every advantage is 0, so nothing should change. Are the raw rewards used instead of "
        "the group advantages?")
    curve = [grpo_step(model, opt, PROMPTS[4:8], reward, group_size=4, max_new_tokens=2, end_id=END, pad_id=PAD,
                       generator=gen) for _ in range(2)]
    assert all(0.0 <= r <= 1.0 for r in curve), f"grpo_step returned {curve}"
