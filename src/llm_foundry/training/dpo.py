"""Direct preference optimisation (DPO; Rafailov et al., 2023) from a chat model folder into a new one.

Each training example is a *pair*: a prompt, a reply people prefer (``chosen``) and one they
do not (``rejected``). With ``log p(reply)`` summed over the reply's tokens (the assistant
mask of ``data/chat.py``, so tool outputs do not count), the policy's implicit reward of a
reply is ``beta * (log p_policy - log p_reference)``, the reference being the start model,
frozen. The loss pushes the chosen reply's reward above the rejected one's:

    loss = -log sigmoid(reward(chosen) - reward(rejected))

so the model learns the preference without a reward model and without sampling, while
``beta`` keeps it near the reference (a small ``beta`` lets it move further).

Everything else is the pretraining :class:`~llm_foundry.training.trainer.Trainer`: the same
step, schedule, progress bar, metrics log, Ctrl-C save and exact ``--resume`` (batch ``k``
is a pure function of ``(seed, k)``), and ``train.lora_rank`` for adapters. Validation
reports, on held-out pairs, the reward accuracy and margin (0 for the start model by
definition) and the model's own preference accuracy (``log p(chosen) > log p(rejected)``,
comparable with the start model's, which the summary shows as ``before``).

Without ``--data`` the pairs are built in: the synthetic tasks' correct replies against wrong
ones (a guess without the calculator where the correct reply uses it, a misspelling), so
``foundry dpo MODEL`` runs offline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..config import TrainConfig
from ..config.stages import DPOConfig
from ..data.chat_batches import IGNORE, target_ids
from ..models.model_dir import load_model_dir, load_model_tokenizer
from ..tokenizers import Tokenizer
from ..tokenizers.special import PAD
from ..utils.device import autocast_context
from ..utils.errors import FoundryError
from .stages import check_stage_folders
from .trainer import Batch, Trainer

DPO_CONFIG_FILE = "dpo_config.json"
PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class Pair:
    """A preference pair: the prompt's messages (ending with a user turn) and two assistant replies
    (a string, or a list of parts as in ``data/chat.py``)."""

    prompt: list[dict]
    chosen: str | list
    rejected: str | list


# ---------------------------------------------------------------- pairs
def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a ``.jsonl`` file of ``{"prompt", "chosen", "rejected"}`` objects; the prompt is a
    string (one user turn) or a messages list ending with a user turn.

    Raises:
        FoundryError: ``FILE:LINE: reason`` for the first bad line (a missing field, a wrong type,
            a malformed conversation), or no pairs at all.
    """
    from ..data.chat import validate_messages
    from ..data.sources import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise FoundryError(f"pairs file not found: {path}")
    pairs = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise FoundryError(f"{path}:{n}: expected an object with {', '.join(PAIR_FIELDS)}")
        missing = [f for f in PAIR_FIELDS if f not in obj]
        if missing:
            raise FoundryError(f"{path}:{n}: missing field '{missing[0]}' (a pair is {{\"prompt\", \"chosen\", \"rejected\"}})")
        prompt = obj["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        try:
            if not isinstance(prompt, list) or not prompt or not isinstance(prompt[-1], dict) or prompt[-1].get("role") != "user":
                raise FoundryError("'prompt' must be a string or a messages list ending with a user turn")
            for name in ("chosen", "rejected"):
                validate_messages([*prompt, {"role": "assistant", "content": obj[name]}])
        except FoundryError as e:
            raise FoundryError(f"{path}:{n}: {e}") from None
        pairs.append(Pair(prompt, obj["chosen"], obj["rejected"]))
    if not pairs:
        raise FoundryError(f"{path} holds no pairs")
    return pairs


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong version of a task's answer: a number off by 1 to 9, or a word with one letter changed."""
    try:
        value = int(answer)
    except ValueError:
        letters = [i for i, ch in enumerate(answer) if ch.isalpha()]
        if not letters:
            return answer + "?"
        i = rng.choice(letters)
        ch = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != answer[i].lower()])
        return answer[:i] + ch + answer[i + 1:]
    delta = rng.choice([d for d in range(-9, 10) if d and value + d >= 0]) if value >= 0 else rng.choice([-2, -1, 1, 2])
    return str(value + delta)


def _replace_answer(content: str | list, answer: str, wrong: str) -> str:
    """The reply ``content`` answering ``wrong`` instead of ``answer``: a reply that uses the calculator
    becomes a guess without it (its final text, wrong), as a model that skips its tool writes it."""
    if not isinstance(content, str):
        content = next((p["text"] for p in reversed(content) if p.get("type") == "text" and answer in p["text"]), answer)
    head, sep, tail = content.rpartition(answer)
    return head + wrong + tail if sep else wrong


def builtin_pairs(tasks: list[str], n: int, *, split: str, seed: int, lang: str) -> list[Pair]:
    """Pairs from the synthetic tasks: each example's reference reply (chosen) against a reply with a
    wrong answer (rejected, see :func:`_replace_answer`)."""
    from ..data.synthetic import make_examples

    rng = random.Random(seed)
    pairs = []
    for k, task in enumerate(tasks):
        for ex in make_examples(task, n, split=split, seed=seed + 1000 * k, lang=lang):
            reply = ex.messages[-1]["content"]
            pairs.append(Pair(ex.messages[:-1], reply, _replace_answer(reply, ex.answer, wrong_answer(ex.answer, rng))))
    return pairs


def render_reply(tokenizer: Tokenizer, prompt: list[dict], reply: str | list, max_tokens: int) -> tuple[list[int], list[int]] | None:
    """``(input ids, targets)`` of the prompt and a reply, the targets -100 outside the reply;
    None when nothing of the reply fits in ``max_tokens``."""
    from ..data.chat import render_conversation

    ids, mask = render_conversation(tokenizer, [*prompt, {"role": "assistant", "content": reply}], max_tokens=max_tokens)
    targets = target_ids(ids, mask, "assistant")
    if all(t == IGNORE for t in targets):
        return None
    return ids[:-1], targets


# ---------------------------------------------------------------- losses
def sequence_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, the sum of ``log p(y_t)`` over the positions whose target is not -100."""
    logits, _ = model(x)
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logp * (y != IGNORE)).sum(-1)


def dpo_terms(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """The DPO loss and its figures from the log-probabilities of a batch's rows (chosen first, then rejected).

    Returns:
        ``loss`` (mean over pairs), ``reward_accuracy`` (share of pairs whose chosen reply earns
        the larger reward), ``reward_margin`` (mean reward difference) and ``preference_accuracy``
        (share of pairs the policy itself gives the chosen reply more probability).
    """
    n = policy.shape[0] // 2
    pc, pr, rc, rr = policy[:n], policy[n:], reference[:n], reference[n:]
    margin = beta * ((pc - rc) - (pr - rr))
    return {"loss": -F.logsigmoid(margin).mean(), "reward_accuracy": (margin > 0).float().mean(),
            "reward_margin": margin.mean(), "preference_accuracy": (pc > pr).float().mean()}


# ---------------------------------------------------------------- the batch source
class PairSource:
    """DPO's :class:`~llm_foundry.training.trainer.BatchSource`: batches of pairs, each batch ``(x, y)``
    with the chosen replies in its first half of rows and the rejected ones, in the same order, in
    the second.

    Args:
        cfg: the (validated) DPO settings.
        init_from: the model folder the run starts from (its tokenizer; the reference).
    """

    label = "dpo"

    def __init__(self, cfg: DPOConfig, init_from: Path):
        self.dpo, self.init_from = cfg, Path(init_from)
        self.val_batches: list[Batch] = []

    def tokenizer_for(self, model_dir: Path | None, resume: bool) -> Tokenizer:
        if model_dir is None:
            raise FoundryError("dpo starts from a model folder")
        return load_model_tokenizer(model_dir)

    def _pairs(self, seed: int) -> tuple[list[Pair], list[Pair]]:
        """The training and held-out pairs."""
        cfg = self.dpo
        if cfg.data is None:
            tasks = cfg.task_list()
            train = builtin_pairs(tasks, cfg.examples_per_task, split="train", seed=seed, lang=cfg.lang)
            held = builtin_pairs(tasks, -(-cfg.val_pairs // len(tasks)), split="heldout", seed=seed + 1, lang=cfg.lang)
            return train, held[:cfg.val_pairs]
        pairs = read_pairs(cfg.data)
        order = np.random.default_rng([seed, 2]).permutation(len(pairs))
        n_val = min(cfg.val_pairs, len(pairs) // 5)  # at most a fifth of a small file goes to validation
        return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]

    def _render(self, pairs: list[Pair]) -> list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]:
        out = []
        for p in pairs:
            c = render_reply(self.tokenizer, p.prompt, p.chosen, self.seq_len + 1)
            r = render_reply(self.tokenizer, p.prompt, p.rejected, self.seq_len + 1)
            if c is not None and r is not None:
                out.append((c, r))
        return out

    def open(self, tokenizer: Tokenizer, seq_len: int, cfg: TrainConfig, device: torch.device) -> None:
        self.tokenizer, self.seq_len, self.batch_size, self.seed, self.device = tokenizer, seq_len, cfg.batch_size, cfg.seed, device
        train, held = self._pairs(cfg.seed)
        self.items, val = self._render(train), self._render(held)
        if not self.items:
            raise FoundryError(f"no pair fits in {seq_len} tokens with a token of its replies left; shorten the prompts")
        self.dropped = len(train) + len(held) - len(self.items) - len(val)
        self.val_batches = [self._collate(val[i:i + cfg.batch_size]) for i in range(0, len(val), cfg.batch_size)]

    def _collate(self, items: list) -> Batch:
        rows = [c for c, _ in items] + [r for _, r in items]
        t = max(len(x) for x, _ in rows)
        pad = self.tokenizer.token_id(PAD) or 0
        x = torch.tensor([ids + [pad] * (t - len(ids)) for ids, _ in rows], dtype=torch.long)
        y = torch.tensor([tg + [IGNORE] * (t - len(tg)) for _, tg in rows], dtype=torch.long)
        return x.to(self.device), y.to(self.device)

    def batch(self, index: int) -> Batch:
        picks = np.random.default_rng([self.seed, 0, index]).integers(len(self.items), size=self.batch_size)
        return self._collate([self.items[int(i)] for i in picks])

    def val_metrics(self, loss: float) -> dict[str, float]:
        return {"loss": loss}

    def describe_val(self, m: dict[str, float]) -> str:
        return (f"held-out DPO loss {m['loss']:.4f} | reward accuracy {m['reward_accuracy']:.3f} | "
                f"margin {m['reward_margin']:.3f} | preference accuracy {m['preference_accuracy']:.3f}")

    def run_config(self, run: Trainer) -> tuple[str, dict]:
        return DPO_CONFIG_FILE, {**self.dpo.to_dict(), "init_from": str(self.init_from.resolve()),
                                 "pairs": len(self.items), "llm_foundry_version": __version__}

    def headline(self, run: Trainer) -> str:
        what = self.dpo.data or f"built-in pairs of {self.dpo.tasks}"
        return (f"[bold]dpo[/] from {self.init_from}: {len(self.items)} pairs ({what}), beta {self.dpo.beta}, "
                f"batch {run.cfg.batch_size} pairs x {run.cfg.grad_accum}, from step {run.step}"
                + (f"; {self.dropped} pairs left out (no reply token fits in {self.seq_len})" if self.dropped else ""))

    def summary(self, run: "DPOTrainer", last_val: dict[str, float] | None) -> dict:
        summary = {"stage": "dpo", "step": run.step, "tokens_seen": run.tokens_seen, "train_time": round(run.train_time, 2)}
        if last_val:
            summary.update({f"val_{k}": round(v, 5) for k, v in last_val.items()})
            summary["before"] = {k: round(v, 5) for k, v in run.before.items()}
        return summary


class DPOTrainer(Trainer):
    """The :class:`~llm_foundry.training.trainer.Trainer` with the DPO loss against a frozen reference."""

    source: PairSource

    def _build(self) -> None:
        super()._build()
        self.beta = self.source.dpo.beta
        self.reference = load_model_dir(self.source.init_from, self.device, with_tokenizer=False).model.eval()
        self.reference.requires_grad_(False)
        # The start model's own figures on the held-out pairs (policy = reference).
        self.before = self._metrics(self.reference) if self.val_batches else {}

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = sequence_logps(self.reference, x, y)
        return dpo_terms(sequence_logps(self.forward, x, y), ref, self.beta)["loss"]

    @torch.no_grad()
    def _metrics(self, model) -> dict[str, float]:
        totals: dict[str, float] = {}
        pairs = 0
        was_training = model.training
        model.eval()
        for x, y in self.val_batches:
            with autocast_context(self.device, self.amp_dtype):
                policy = sequence_logps(model, x, y)
                ref = sequence_logps(self.reference, x, y)
            n = x.shape[0] // 2
            for k, v in dpo_terms(policy, ref, self.beta).items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            pairs += n
        model.train(was_training)
        return {k: v / max(pairs, 1) for k, v in totals.items()}

    def evaluate(self) -> dict[str, float] | None:
        """The held-out DPO loss, reward accuracy and margin, and preference accuracy."""
        return self._metrics(self.model) if self.val_batches else None


def dpo_trainer(init_from: str | Path, out_dir: str | Path, cfg: DPOConfig, resume: bool = False,
                quiet: bool = False) -> DPOTrainer:
    """The trainer of a DPO run from ``init_from`` (also the frozen reference) into ``out_dir``.

    Raises:
        FoundryError: bad settings or pairs, nothing to resume, a run already in ``out_dir``, or
            ``out_dir`` is ``init_from``.
    """
    cfg, init_from = cfg.validate(), Path(init_from)
    check_stage_folders(init_from, Path(out_dir))
    return DPOTrainer(None, cfg.train, PairSource(cfg, init_from), out_dir, resume=resume,
                      init_from=None if resume else init_from, quiet=quiet)
