"""Reinforcement learning on verifiable tasks, GRPO-style (nanochat's ``chat_rl.py``).

One step:

1. draw ``prompts_per_step`` training prompts of the task(s) (a pure function of
   ``(seed, step)``, so a resumed run draws the same ones);
2. sample a *group* of ``group_size`` completions for each prompt with the
   :class:`~llm_foundry.inference.engine.Engine` (tool use on: the calculator's
   results are forced into the completion with mask 0, so they are never trained);
3. score each completion with the task's checker (``score_answer``: 1 right, 0 wrong), or with
   the user's own function (``rl.reward``, ``--reward module:function``: :func:`load_reward`);
4. advantage = reward - the group's mean reward (optionally divided by the group's
   std): a completion is pushed up only if it did better than its siblings, so a
   prompt the model always (or never) gets right contributes nothing;
5. policy-gradient loss ``-mean(advantage * log p(token))`` over the sampled tokens,
   plus, optionally, ``kl_coef`` times a KL estimate to the frozen starting model.

The step, loop, checkpoint and exact resume are the shared ones (``training/step.py``,
``loop.py``, ``state.py``); only the rollouts, the loss and the logs are RL's own. Before the first step and after the
last, the mean reward on held-out prompts is measured with the same sampling
settings, so the report can show what RL changed.

Under ``torchrun`` (DDP, ``training/distributed.py``) every process draws the same prompts and
sampling seeds for a step and rolls out every ``world``-th prompt; the loss is normalised by the
completion tokens of *all* processes, so the all-reduced gradient is the one-process gradient and
N processes train what one trains. Rank 0 measures the held-out reward and writes everything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..config.stages import RLConfig
from ..utils.device import autocast_context
from ..utils.io import atomic_write_json, read_json
from ..utils.progress import console
from ..models.model_dir import load_model_dir, recover_checkpoint_dir
from ..tokenizers.special import ASSISTANT_END, PAD
from . import distributed
from .loop import MetricsLog, run_loop
from .optim import peak_lrs
from .rewards import Reward, checker_reward, load_reward
from .schedule import lr_factor
from .stages import stage_source
from .state import save_checkpoint
from .step import StepParts, train_step
from .trainer import METRICS_FILE, run_device

RL_CONFIG_FILE, RL_EVAL_FILE = "rl_config.json", "rl_eval.json"


def completion_text(tokenizer, tokens: list[int]) -> str:
    """A completion as the task checkers read it: special tokens kept, so ``score_answer``
    can leave the tool's output blocks out of the answer."""
    return tokenizer.decode(tokens, skip_special=False)


def group_advantages(rewards: list[float], std_normalize: bool = False) -> list[float]:
    """GRPO advantages of one group: reward minus the group's mean (optionally over its std).

    A group whose samples all scored the same gets zeros: nothing to prefer.
    """
    r = np.asarray(rewards, dtype=np.float64)
    adv = r - r.mean()
    if std_normalize:
        adv = adv / (r.std() + 1e-4)
    return adv.tolist()


@torch.no_grad()
def sampled_reward(engine, examples: list, *, samples: int, max_tokens: int, temperature: float,
                   top_k: int | None, seed: int, greedy: bool = True, reward: Reward = checker_reward) -> dict[str, float]:
    """Mean reward (``reward``: the checkers' by default) over ``samples`` sampled completions of each
    example, and (with ``greedy``) greedy accuracy (the checkers')."""
    from ..data.chat import render_prompt
    from ..eval.answers import score_answer

    engine.model.eval()
    rewards, greedy_scores = [], []
    for i, ex in enumerate(examples):
        prompt = render_prompt(engine.tokenizer, ex.messages)
        comps, _ = engine.generate(prompt, num_samples=samples, max_tokens=max_tokens, temperature=temperature,
                                   top_k=top_k, seed=seed + i)
        rewards += [reward(ex, completion_text(engine.tokenizer, c)) for c in comps]
        if not greedy:
            continue
        comps, _ = engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=0.0, seed=seed + i)
        greedy_scores.append(score_answer(ex.task, completion_text(engine.tokenizer, comps[0]), ex.answer))
    return {"mean_reward": float(np.mean(rewards)) if rewards else 0.0,
            "greedy_accuracy": float(np.mean(greedy_scores)) if greedy_scores else 0.0, "prompts": len(examples)}


def learnable(rows: list[tuple[list[int], list[int], float]]) -> list[tuple[list[int], list[int], float]]:
    """The rollout rows a step learns from: a nonzero advantage (a group that was all right or all
    wrong teaches nothing) and at least one completion token."""
    return [r for r in rows if r[2] != 0.0 and any(r[1])]


class RLTrainer:
    """GRPO on a chat model folder into a new model folder.

    Built from the shared pieces: :class:`~llm_foundry.training.step.StepParts` and
    :func:`~llm_foundry.training.step.train_step` for the update, the checkpoint and
    exact resume of :mod:`~llm_foundry.training.state`, and
    :func:`~llm_foundry.training.loop.run_loop`; it supplies the rollouts, the loss and the logs.

    Args:
        init_from: the SFT model folder.
        out_dir: the RL model folder.
        cfg: RL settings.
        resume: continue the RL run saved in ``out_dir``.
        quiet: no progress bar or log lines.
        on_step: called with ``(step, progress)`` after each step.
    """

    def __init__(self, init_from: str | Path, out_dir: str | Path, cfg: RLConfig, resume: bool = False,
                 quiet: bool = False, on_step: Callable[[int, float], None] | None = None):
        self.rl = cfg.validate()
        self.reward = load_reward(cfg.reward) if cfg.reward else checker_reward  # a bad one fails now, not mid-run
        # Under torchrun: join the process group (DDP); rank 0 alone writes and talks.
        self.dist, device = distributed.setup(cfg.device, "ddp")
        self.out, self.resume, self.quiet, self.on_step = Path(out_dir), resume, quiet or not self.dist.main, on_step
        if self.dist.active:
            if self.dist.main and self.out.is_dir():
                recover_checkpoint_dir(self.out)  # once, before the others read the folder
            self.dist.barrier()
        self.init_from = Path(init_from)
        self.model_cfg, self.tokenizer = stage_source(self.init_from, self.out, resume)
        self.cfg = cfg.train_config()
        self.device, self.amp_dtype = run_device(device, cfg.precision, self.model_cfg.dim)

    def _build(self) -> None:
        torch.manual_seed(self.cfg.seed)
        bundle = load_model_dir(self.out if self.resume else self.init_from, self.device, with_tokenizer=False)
        self.model = bundle.model
        self.model.train()
        # DDP wraps the model for the loss's forward; rollouts sample through the plain model
        # (the same weights on every process).
        wrapped, grad_sync = distributed.wrap(self.model, self.dist)
        self.parts = StepParts.build(self.model, self.cfg, self.amp_dtype)
        self.parts.grad_sync = grad_sync
        self.optimizers = self.parts.optimizers
        self.step, self.tokens_seen, self.train_time = 0, 0, 0.0
        self.metrics = MetricsLog(self.out / METRICS_FILE)
        if self.resume:
            state = distributed.resume_checkpoint(self.out, self.parts, bundle.step, peak_lrs(self.optimizers, self.cfg),
                                                  self.dist)
            self.step = state.step
            self.tokens_seen, self.train_time = state.extra.get("tokens_seen", 0), state.extra.get("train_time", 0.0)
            if self.dist.main:
                self.metrics.trim(self.step)
        self.forward = wrapped

    def save_checkpoint(self) -> None:
        """Write the RL folder's checkpoint as one unit (see :func:`~llm_foundry.training.state.save_checkpoint`)."""
        extra = {"tokens_seen": self.tokens_seen, "train_time": self.train_time}
        if self.dist.active:
            distributed.save_checkpoint(self.out, self.parts, self.tokenizer, self.step, extra, self.dist)
        else:
            save_checkpoint(self.out, self.parts, self.tokenizer, self.step, extra)

    def _write_run_config(self) -> None:
        if not self.dist.main:
            return
        atomic_write_json(self.out / RL_CONFIG_FILE, {**dataclasses.asdict(self.rl), "init_from": str(self.init_from.resolve()),
                                                      "llm_foundry_version": __version__})

    # ------------------------------------------------------------ pieces
    def _pools(self) -> None:
        from ..data.synthetic import make_examples

        self.pool = {t: make_examples(t, self.rl.examples, split=self.rl.split, seed=self.rl.seed + 7 * k, lang=self.rl.lang)
                     for k, t in enumerate(self.rl.tasks)}
        n = self.rl.eval_examples
        self.heldout = [ex for k, t in enumerate(self.rl.tasks)
                        for ex in make_examples(t, n, split="heldout", seed=self.rl.seed + 100 + k, lang=self.rl.lang)] if n else []
        # Fresh prompts of the training distribution, none of them in the pool: the reward on
        # the task RL optimises, beside the held-out reward that shows whether it generalises.
        seen = {ex.messages[0]["content"] for exs in self.pool.values() for ex in exs}
        self.task_eval = [ex for k, t in enumerate(self.rl.tasks)
                          for ex in make_examples(t, n, split=self.rl.split, seed=self.rl.seed + 200 + k, lang=self.rl.lang)
                          if ex.messages[0]["content"] not in seen] if n else []

    def _engine(self):
        from ..inference.engine import Engine

        return Engine(self.model, self.tokenizer, precision=self.rl.precision, tools=True)

    def measure(self) -> dict[str, float] | None:
        """Mean reward and greedy accuracy of the current weights on the held-out prompts, and
        the mean reward on fresh prompts of the training distribution (``task_mean_reward``)."""
        if not self.heldout:
            return None
        settings = dict(samples=self.rl.eval_samples, max_tokens=self.rl.max_tokens, temperature=self.rl.temperature,
                        top_k=self.rl.top_k, seed=self.rl.seed + 10_000, reward=self.reward)
        engine = self._engine()
        out = sampled_reward(engine, self.heldout, **settings)
        task = sampled_reward(engine, self.task_eval, greedy=False, **settings)
        out.update(task_mean_reward=task["mean_reward"], task_prompts=task["prompts"])
        self.model.train()
        return out

    def _logprobs(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.amp_dtype):
            logits, _ = model(x)
        logp = F.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)

    def _rollout(self, step: int) -> tuple[list[tuple[list[int], list[int], float]], list[float]]:
        """Sample groups for this step: ``[(ids, trained mask, advantage)]`` and the raw rewards."""
        from ..data.chat import render_prompt

        rl = self.rl
        rng = np.random.default_rng([rl.seed, step])
        engine = self._engine()
        end_id = self.tokenizer.token_id(ASSISTANT_END)
        rows, rewards = [], []
        self.model.eval()
        for p in range(rl.prompts_per_step):
            # every process draws every prompt and seed (the same stream), and rolls out its share
            task = rl.tasks[int(rng.integers(len(rl.tasks)))]
            ex = self.pool[task][int(rng.integers(len(self.pool[task])))]
            seed = int(rng.integers(2**31))
            if p % self.dist.world != self.dist.rank:
                continue
            prompt = render_prompt(self.tokenizer, ex.messages)
            with torch.no_grad():
                comps, masks = engine.generate(prompt, num_samples=rl.group_size, max_tokens=rl.max_tokens,
                                               temperature=rl.temperature, top_k=rl.top_k, seed=seed)
            r = [self.reward(ex, completion_text(self.tokenizer, c)) for c in comps]
            adv = group_advantages(r, rl.std_normalize)
            rewards += r
            for c, m, a in zip(comps, masks, adv):
                c, m = list(c), list(m)
                if len(c) < rl.max_tokens and end_id is not None:
                    c, m = c + [end_id], m + [1]  # it stopped on its own: the stop is a choice to reinforce too
                rows.append((prompt + c, [0] * len(prompt) + m, float(a)))
        self.model.train()
        return rows, rewards

    def _loss(self, rows: list[tuple[list[int], list[int], float]]) -> tuple[torch.Tensor, float]:
        """The policy-gradient loss (and the KL to the reference) of ``rows``, the learnable rows
        (:func:`learnable`: a nonzero advantage and at least one completion token).

        Under torchrun each process has its share of the rows (maybe none: a row of padding with
        no trained token then keeps it in the all-reduce). Sums are divided by the trained tokens of
        all processes and multiplied by the world size, so DDP's average of the gradients is the
        one-process gradient; the KL returned is the global one.
        """
        if not rows:
            rows = [([0, 0], [0, 0], 0.0)]
        t = min(max(len(ids) for ids, _, _ in rows), self.model_cfg.max_seq_len + 1)
        pad = self.tokenizer.token_id(PAD) or 0
        ids = torch.full((len(rows), t), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.float32)
        adv = torch.tensor([a for _, _, a in rows], dtype=torch.float32)
        for i, (seq, m, _) in enumerate(rows):
            seq, m = seq[:t], m[:t]
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(m)] = torch.tensor(m, dtype=torch.float32)
        ids, mask, adv = ids.to(self.device), mask.to(self.device), adv.to(self.device)
        x, y, m = ids[:, :-1], ids[:, 1:], mask[:, 1:]
        logp = self._logprobs(self.forward, x, y)
        world = self.dist.world
        n = self.dist.sum(m.sum()).to(self.device).clamp_min(1.0) / world  # n / world: DDP divides by world again
        loss = -(logp * adv[:, None] * m).sum() / n
        kl = 0.0
        if self.rl.kl_coef > 0:
            with torch.no_grad():
                ref = self._logprobs(self.reference, x, y)
            # k3 estimator of KL(policy || reference): unbiased and always >= 0.
            d = ref - logp
            kl_t = ((torch.exp(d) - d - 1) * m).sum() / n
            loss = loss + self.rl.kl_coef * kl_t
            kl = float(self.dist.sum(kl_t.detach())) / world
        return loss, kl

    # ------------------------------------------------------------ loop
    def run(self) -> dict:
        """Run the RL steps; returns a summary with the reward before and after.

        Raises:
            TrainingInterrupted: after Ctrl-C/SIGTERM, with the checkpoint saved.
        """
        rl = self.rl
        self._pools()
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        self._write_run_config()
        self.reference = None
        if rl.kl_coef > 0:
            self.reference = load_model_dir(self.init_from, self.device, with_tokenizer=False).model.eval()
            self.reference.requires_grad_(False)
        eval_path = self.out / RL_EVAL_FILE
        evals = read_json(eval_path, "rl eval") if eval_path.is_file() else {}
        if "before" not in evals and self.dist.main:  # rank 0 measures; the others wait at the barrier
            evals["before"] = self.measure()
            atomic_write_json(eval_path, evals)
        self.dist.barrier()
        if not self.quiet:
            before = evals["before"] or {}
            console.print(f"[bold]rl[/] from {self.init_from}: tasks {', '.join(rl.tasks)}, {rl.prompts_per_step} prompts x "
                          f"{rl.group_size} samples per step, from step {self.step}"
                          + (f"; held-out reward before {before['mean_reward']:.3f}" if before else ""))
        def one_step() -> None:
            t0 = time.perf_counter()
            rows, rewards = self._rollout(self.step)
            t_gen = time.perf_counter() - t0
            got: dict[str, float] = {"loss": 0.0, "kl": 0.0}

            learn = learnable(rows)

            def loss_of(_micro: int) -> torch.Tensor:
                loss, got["kl"] = self._loss(learn)
                return loss

            if self.dist.agree(bool(learn)):  # every process steps, or none
                factor = lr_factor(self.step, self.step / rl.steps, "wsd", rl.warmup_steps, 0.0, 1.0)
                got["loss"] = float(self.dist.sum(train_step(self.parts, factor, 1, loss_of).detach())) / self.dist.world
            # else every group was all-right or all-wrong: nothing to learn from this step
            self.step += 1
            counts = self.dist.sum(torch.tensor([float(sum(rewards)), float(len(rewards)),
                                                 float(sum(len(r[0]) for r in rows))], dtype=torch.float64))
            self.tokens_seen += int(counts[2])
            self.train_time += time.perf_counter() - t0
            got.update(reward=float(counts[0] / counts[1]), gen_time=t_gen)
            last.update(got)

        def after_step(step: int, view) -> None:
            if not self.dist.main:
                return
            self.metrics.append({"step": step, "reward": round(last["reward"], 4), "loss": round(last["loss"], 5),
                                 "kl": round(last["kl"], 5), "lr": self.optimizers[0].param_groups[0]["lr"],
                                 "gen_time": round(last["gen_time"], 2), "time": round(self.train_time, 2)})
            view.show(step, step / rl.steps, f"reward {last['reward']:.3f} | loss {last['loss']:+.4f}")

        last: dict[str, float] = {}
        # Under torchrun a stop request of its own kind (see distributed.StopOnce); else the loop's.
        with distributed.StopOnce(self.quiet) if self.dist.active else contextlib.nullcontext() as stop:
            run_loop(label="rl", max_steps=rl.steps, step=lambda: self.step, train_step=one_step,
                     progress=lambda: self.step / rl.steps, save=self.save_checkpoint, quiet=self.quiet,
                     checkpoint_interval=rl.checkpoint_interval, after_step=after_step, on_step=self.on_step,
                     stop=stop, agree=self.dist.agree if self.dist.active else None)
        self.save_checkpoint()
        if self.dist.main and ("after" not in evals or evals.get("after_step") != self.step):
            evals["after"], evals["after_step"] = self.measure(), self.step
            atomic_write_json(eval_path, evals)
        self.dist.barrier()
        summary = {"stage": "rl", "step": self.step, "train_time": round(self.train_time, 2)}
        if evals.get("before") and evals.get("after"):
            summary.update(reward_before=round(evals["before"]["mean_reward"], 4),
                           reward_after=round(evals["after"]["mean_reward"], 4),
                           greedy_before=round(evals["before"]["greedy_accuracy"], 4),
                           greedy_after=round(evals["after"]["greedy_accuracy"], 4))
            if "task_mean_reward" in evals["before"]:  # (absent in a run begun by an older version)
                summary.update(task_reward_before=round(evals["before"]["task_mean_reward"], 4),
                               task_reward_after=round(evals["after"]["task_mean_reward"], 4))
        return summary


def run_rl(init_from: str | Path, out_dir: str | Path, cfg: RLConfig, resume: bool = False, quiet: bool = False,
           on_step: Callable[[int, float], None] | None = None) -> dict:
    """Run (or resume) the RL stage; returns its summary."""
    return RLTrainer(init_from, out_dir, cfg, resume=resume, quiet=quiet, on_step=on_step).run()

