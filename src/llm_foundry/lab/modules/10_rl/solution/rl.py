"""Module 10: reinforcement learning on a checkable task — GRPO, and PPO with a value head.

The model samples a *group* of completions per prompt, a checker scores each one (1 right, 0 wrong),
and the policy gradient raises the log-probability of the completions that did better than their
siblings. Ours: ``src/llm_foundry/training/rl.py`` (``group_advantages``, ``RLTrainer._rollout``,
``RLTrainer._loss``), run by ``foundry rl``.

PPO is the older recipe the source design asks for: a value head predicts the expected reward at
every token, GAE turns rewards and values into per-token advantages, and a clipped ratio keeps each
update close to the policy that sampled the data.

Shapes: ``ids`` is ``(rows, T)``; the log-probabilities, values, rewards and the mask of the tokens a
row *chose* are ``(rows, T - 1)``, position ``t`` scoring token ``ids[:, t + 1]``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import MiniLLM

RewardFn = Callable[[list[int], list[int]], float]  # (prompt ids, completion ids) -> reward


# ------------------------------------------------------------------------------- given: rollouts
@torch.no_grad()
def sample_completions(model: MiniLLM, prompts: Sequence[Sequence[int]], group_size: int, max_new_tokens: int,
                       end_id: int, generator: torch.Generator, temperature: float = 1.0) -> list[list[int]]:
    """``group_size`` sampled completions of each prompt, the groups one after another (prompt ``i``'s
    are rows ``i * group_size .. (i + 1) * group_size - 1``). A completion ends with ``end_id`` when
    the model chose to stop (the stop is a choice to reinforce too) or after ``max_new_tokens``."""
    model.eval()
    out = []
    for prompt in prompts:
        ids = torch.tensor([list(prompt)] * group_size)
        done = torch.zeros(group_size, dtype=torch.bool)
        rows: list[list[int]] = [[] for _ in range(group_size)]
        for _ in range(max_new_tokens):
            logits = model(ids)[0][:, -1] / temperature
            tok = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            for i in range(group_size):
                if not done[i]:
                    rows[i].append(int(tok[i]))
            done |= tok[:, 0] == end_id
            if bool(done.all()):
                break
            ids = torch.cat([ids, tok], dim=1)
        out += rows
    model.train()
    return out


def pad_rollouts(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` (rows, T): each prompt followed by its completion, padded with ``pad_id``; ``mask``
    (rows, T - 1): 1 where position ``t`` predicts a completion token ``ids[:, t + 1]``."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), t - 1)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, len(p) - 1:len(s) - 1] = 1.0
    return ids, mask


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target)`` at every position: ``(rows, T')`` from logits ``(rows, T', vocab)``."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------------- GRPO
def group_advantages(rewards: torch.Tensor, group_size: int, std_normalize: bool = False) -> torch.Tensor:
    """Advantages of the rewards of consecutive groups of ``group_size`` samples: each reward minus
    its own group's mean (and divided by the group's standard deviation + 1e-4 with
    ``std_normalize``). A group whose samples all scored the same gets zeros."""
    # BEGIN SOLUTION advantages
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if std_normalize:
        adv = adv / (r.std(dim=1, unbiased=False, keepdim=True) + 1e-4)
    return adv.flatten()
    # END SOLUTION


def policy_gradient_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-mean(advantage · log p(token))`` over the tokens of ``mask``: ``logprobs`` and ``mask`` are
    ``(rows, T)``, ``advantages`` one per row. Minimising it raises the log-probability of the tokens
    of rows with a positive advantage and lowers those of rows with a negative one."""
    # BEGIN SOLUTION pg_loss
    return -(logprobs * advantages[:, None] * mask).sum() / mask.sum().clamp_min(1.0)
    # END SOLUTION


def grpo_step(model: MiniLLM, optimizer: torch.optim.Optimizer, prompts: Sequence[Sequence[int]],
              reward_fn: RewardFn, *, group_size: int, max_new_tokens: int, end_id: int, pad_id: int,
              generator: torch.Generator, std_normalize: bool = False) -> float:
    """One GRPO step: sample a group per prompt, score each completion with ``reward_fn``, compute
    the group advantages and the policy-gradient loss, and take one optimizer step. Returns the mean
    reward of the samples (the reward curve)."""
    # BEGIN SOLUTION grpo_step
    # STUB: # sample a group per prompt, score each completion, group advantages, the loss on the
    # STUB: # completions' tokens, one optimizer step; return the mean reward
    # STUB: raise NotImplementedError("grpo_step")
    completions = sample_completions(model, prompts, group_size, max_new_tokens, end_id, generator)
    rows = [p for p in prompts for _ in range(group_size)]
    rewards = torch.tensor([reward_fn(list(p), c) for p, c in zip(rows, completions)], dtype=torch.float32)
    adv = group_advantages(rewards, group_size, std_normalize)
    ids, mask = pad_rollouts(rows, completions, pad_id)
    logits, _ = model(ids[:, :-1])
    loss = policy_gradient_loss(token_logprobs(logits, ids[:, 1:]), adv, mask)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(rewards.mean())
    # END SOLUTION


# ------------------------------------------------------------------------------- PPO
class ValueHead(nn.Module):
    """The value network: the expected reward from each position, read from the policy's last hidden
    state (detached: the value loss trains the head, not the policy's body)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.detach()).squeeze(-1)


def policy_and_values(model: MiniLLM, value_head: ValueHead, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(rows, T, vocab)`` and values ``(rows, T)`` of ``idx`` in one pass through your model's
    blocks (the same computation as ``model(idx)``, keeping the hidden state for the value head)."""
    t = idx.shape[1]
    x = model.tok_embeddings(idx)
    for layer in model.layers:
        x = layer(x, model.rope_cos[:t], model.rope_sin[:t])
    h = model.norm(x)
    return model.output(h), value_head(h)


def final_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards ``(rows, T)``: each row's reward on its last masked token, 0 elsewhere (the
    checker scores a whole completion)."""
    last = (mask * torch.arange(1, mask.shape[1] + 1)).argmax(dim=1)
    out = torch.zeros_like(mask)
    out[torch.arange(len(rewards)), last] = rewards
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked (contiguous) positions of each row.

    ``delta_t = r_t + gamma · V_{t+1} − V_t`` (``V_{t+1}`` is 0 after a row's last token), and
    ``A_t = delta_t + gamma · lam · A_{t+1}``, computed from the last position back. Returns the
    advantages and the returns ``A + V``, both 0 outside the mask."""
    # BEGIN SOLUTION gae
    # STUB: # from the last position back: delta_t = r_t + gamma * V_{t+1} (0 after the row's last token) - V_t,
    # STUB: # A_t = delta_t + gamma * lam * A_{t+1}; return (advantages, returns = A + V), 0 off the mask
    # STUB: raise NotImplementedError("gae")
    rows, t_len = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rows)
    for t in reversed(range(t_len)):
        # does the row go on after t? then bootstrap from the next value, else the episode ended here
        go_on = mask[:, t + 1] if t + 1 < t_len else torch.zeros(rows)
        next_value = values[:, t + 1] * go_on if t + 1 < t_len else torch.zeros(rows)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * go_on * running
        adv[:, t] = running * mask[:, t]
    return adv, (adv + values) * mask
    # END SOLUTION


def ppo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate over the masked tokens (all ``(rows, T)``): with the ratio
    ``r = p_new / p_old``, ``-mean(min(r · A, clip(r, 1 − clip, 1 + clip) · A))``."""
    # BEGIN SOLUTION ppo_loss
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    return -(torch.min(unclipped, clipped) * mask).sum() / mask.sum().clamp_min(1.0)
    # END SOLUTION


def ppo_step(model: MiniLLM, value_head: ValueHead, optimizer: torch.optim.Optimizer,
             prompts: Sequence[Sequence[int]], reward_fn: RewardFn, *, group_size: int, max_new_tokens: int,
             end_id: int, pad_id: int, generator: torch.Generator, epochs: int = 2, clip: float = 0.2,
             vf_coef: float = 0.5, gamma: float = 1.0, lam: float = 0.95) -> float:
    """One PPO step: sample, score, compute the old log-probabilities and values once, the GAE
    advantages (normalised over the batch's tokens) and returns, then ``epochs`` updates of
    ``ppo_loss + vf_coef · ½·mean((V − returns)²)``. ``optimizer`` holds the model's and the value
    head's parameters. Returns the mean reward of the samples."""
    # BEGIN SOLUTION ppo_step
    # STUB: # as grpo_step, then the old log-probabilities and values once (no grad), gae on
    # STUB: # final_token_rewards, normalised advantages, and `epochs` updates of ppo_loss + vf_coef * value loss
    # STUB: raise NotImplementedError("ppo_step")
    completions = sample_completions(model, prompts, group_size, max_new_tokens, end_id, generator)
    rows = [p for p in prompts for _ in range(group_size)]
    rewards = torch.tensor([reward_fn(list(p), c) for p, c in zip(rows, completions)], dtype=torch.float32)
    ids, mask = pad_rollouts(rows, completions, pad_id)
    x, y = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        logits, values = policy_and_values(model, value_head, x)
        old = token_logprobs(logits, y)
    adv, returns = gae(final_token_rewards(rewards, mask), values, mask, gamma, lam)
    n = mask.sum().clamp_min(1.0)
    mean = (adv * mask).sum() / n
    std = (((adv - mean) * mask) ** 2).sum().div(n).sqrt()
    adv = (adv - mean) / (std + 1e-8) * mask
    for _ in range(epochs):
        logits, values = policy_and_values(model, value_head, x)
        value_loss = 0.5 * (((values - returns) * mask) ** 2).sum() / n
        loss = ppo_loss(token_logprobs(logits, y), old, adv, mask, clip) + vf_coef * value_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(rewards.mean())
    # END SOLUTION
