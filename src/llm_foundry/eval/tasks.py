"""Chat evaluation tasks: generative (exact or numeric match) and multiple choice.

A :class:`Task` is a list of :class:`~llm_foundry.eval.readers.TaskItem` plus how to
score it:

* **generative**: the engine completes each prompt (greedy by default, tools on unless
  disabled) and :func:`~llm_foundry.eval.answers.score_answer` checks the reply with
  the task's scorer (``numeric``, ``exact`` or a built-in task's checker);
* **choice**: nothing is generated; each choice's log-likelihood as the assistant's
  continuation of the prompt is computed and the most likely choice is the answer.

Tasks come from the built-in synthetic data (:data:`BUILTIN_TASKS`, held-out split by
default) or from local files (GSM8K, MMLU, ARC, chat ``.jsonl``; see ``readers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.chat import render_prompt
from ..data.synthetic import DEFAULT_IDENTITY, TASKS, make_examples
from .answers import score_answer
from ..inference.engine import Engine
from ..utils.device import autocast_context
from ..utils.errors import FoundryError
from .readers import FORMATS, TaskItem, detect_format, read_arc, read_chat_items, read_gsm8k, read_mmlu

BUILTIN_TASKS = TASKS


@dataclass
class Task:
    """A named list of items and how to score them.

    Attributes:
        name: shown in results.
        kind: ``generative`` or ``choice``.
        items: the questions.
        scorer: for generative tasks, the :func:`score_answer` task name.
    """

    name: str
    kind: str
    items: list[TaskItem]
    scorer: str = "exact"


@dataclass
class TaskResult:
    """Accuracy of one task, with every item's outcome in ``samples``."""

    name: str
    kind: str
    correct: float
    total: int
    samples: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_dict(self, with_samples: bool = False) -> dict:
        d = {"task": self.name, "kind": self.kind, "accuracy": self.accuracy, "correct": self.correct, "total": self.total}
        if with_samples:
            d["samples"] = self.samples
        return d


def builtin_task(name: str, n: int = 100, *, split: str = "heldout", seed: int = 1234, lang: str = "mixed",
                 identity: str = DEFAULT_IDENTITY) -> Task:
    """A built-in synthetic task (held-out split by default, seeded apart from training data)."""
    examples = make_examples(name, n, split=split, seed=seed, lang=lang, name=identity)
    return Task(name, "generative", [TaskItem(e.prompt, e.answer) for e in examples], scorer=name)


def load_task_file(path: str | Path, n: int | None = None) -> Task:
    """A task from a local file (GSM8K, MMLU, ARC or chat ``.jsonl``), optionally its first ``n`` items."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "gsm8k":
        task = Task(path.stem, "generative", read_gsm8k(path), scorer="numeric")
    elif fmt == "mmlu":
        task = Task(path.stem, "choice", read_mmlu(path))
    elif fmt == "arc":
        task = Task(path.stem, "choice", read_arc(path))
    else:
        items, scorer = read_chat_items(path)
        task = Task(path.stem, "generative", items, scorer=scorer)
    if not task.items:
        raise FoundryError(f"{path} holds no questions")
    if n is not None:
        task.items = task.items[:n]
    return task


def load_task(spec: str, n: int | None = None, **builtin_kwargs) -> Task:
    """A built-in task by name, or a task file by path."""
    if spec in BUILTIN_TASKS:
        return builtin_task(spec, 100 if n is None else n, **builtin_kwargs)
    if Path(spec).exists():
        return load_task_file(spec, n)
    raise FoundryError(f"unknown task '{spec}': not a built-in task ({', '.join(BUILTIN_TASKS)}) and no such file "
                       f"(files: {', '.join(FORMATS)} formats)")


def evaluate_task(engine: Engine, task: Task, *, batch_size: int = 16, max_tokens: int = 128, temperature: float = 0.0,
                  seed: int = 0, on_progress: Callable[[int], None] | None = None) -> TaskResult:
    """Score ``engine`` on ``task``.

    Args:
        engine: the model; its ``tools`` setting decides whether python blocks are evaluated.
        batch_size: prompts decoded (or choices scored) together.
        max_tokens: reply length limit of generative tasks.
        temperature: 0 = greedy (the default, so results are reproducible).
        seed: sampling seed when ``temperature > 0``.
        on_progress: called with the number of items just finished.
    """
    if batch_size < 1:
        raise FoundryError("batch size must be >= 1")
    if task.kind == "choice":
        return _evaluate_choice(engine, task, batch_size, on_progress)
    tok = engine.tokenizer
    ctx = engine.model.cfg.max_seq_len
    result = TaskResult(task.name, task.kind, 0.0, len(task.items))
    prompts = [render_prompt(tok, item.messages) for item in task.items]
    for start in range(0, len(prompts), batch_size):
        idx = [i for i in range(start, min(start + batch_size, len(prompts)))]
        fits = [i for i in idx if len(prompts[i]) < ctx]
        outs = dict.fromkeys(idx, None)
        if fits:
            completions = engine.generate_batch([prompts[i] for i in fits], max_tokens=max_tokens,
                                                temperature=temperature, seed=seed + start)
            outs.update(zip(fits, completions))
        for i in idx:
            item = task.items[i]
            if outs[i] is None:
                text, score = "", 0.0  # prompt longer than the model's context: counted wrong
            else:
                text = tok.decode(outs[i], skip_special=False)
                score = score_answer(task.scorer, text, item.answer)
            result.correct += score
            result.samples.append({"prompt": item.messages[-1]["content"], "completion": text, "answer": item.answer,
                                   "score": score, **({} if outs[i] is not None else {"skipped": "prompt too long"})})
        if on_progress:
            on_progress(len(idx))
    return result


@torch.no_grad()
def choice_logprobs(engine: Engine, prompt: list[int], choices: list[list[int]]) -> list[float]:
    """Sum of log-probabilities of each choice's tokens as the continuation of ``prompt``."""
    model, device = engine.model, engine.device
    ctx = model.cfg.max_seq_len
    seqs = [(prompt + c)[-ctx:] for c in choices]
    length = max(len(s) for s in seqs)
    x = torch.full((len(seqs), length), engine.pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        x[r, :len(s)] = torch.tensor(s)  # right padding: causal attention never looks at it
    was_training = model.training
    model.eval()
    try:
        with autocast_context(device, engine.amp_dtype):
            logits, _ = model(x.to(device))
    finally:
        model.train(was_training)
    logp = F.log_softmax(logits.float(), dim=-1).cpu()
    out = []
    for r, (s, c) in enumerate(zip(seqs, choices)):
        k = min(len(c), len(s) - 1)
        positions = torch.arange(len(s) - k - 1, len(s) - 1)
        out.append(float(logp[r, positions, torch.tensor(s[len(s) - k:])].sum()))
    return out


def _evaluate_choice(engine: Engine, task: Task, batch_size: int, on_progress) -> TaskResult:
    tok = engine.tokenizer
    result = TaskResult(task.name, task.kind, 0.0, len(task.items))
    for i, item in enumerate(task.items):
        prompt = render_prompt(tok, item.messages)
        scores = choice_logprobs(engine, prompt, [tok.encode(c) for c in item.choices])
        pick = item.choices[max(range(len(scores)), key=scores.__getitem__)]
        score = float(pick == item.answer)
        result.correct += score
        result.samples.append({"prompt": item.messages[-1]["content"], "completion": pick, "answer": item.answer,
                               "score": score})
        if on_progress:
            on_progress(1)
    return result


def evaluate_tasks(engine: Engine, tasks: list[Task], **kwargs) -> dict:
    """Evaluate several tasks; returns ``{"tasks": [per-task dicts], "aggregate": mean accuracy}``."""
    results = [evaluate_task(engine, t, **kwargs) for t in tasks]
    agg = sum(r.accuracy for r in results) / len(results) if results else 0.0
    return {"tasks": [r.to_dict() for r in results], "aggregate": agg, "results": results}
