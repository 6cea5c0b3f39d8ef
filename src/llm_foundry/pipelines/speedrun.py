"""The speedrun: tokenizer -> pretrain -> midtrain -> SFT -> RL -> eval -> report, in one run folder.

nanochat's ``speedrun.sh`` as a library function. A preset (YAML under
``configs/speedrun/``) holds the settings of every stage; ``key=value`` overrides
reach into it by path (``pretrain.time_budget=60``, ``rl.steps=10``). The run folder::

    RUN/
      speedrun_state.json   the resolved settings and the finished stages (a re-run skips them)
      data/                 the pretraining text as token shards, with the tokenizer
      base/ mid/ sft/ rl/   one model folder per stage, each with its metrics.jsonl
      eval/results.json     held-out accuracy per task and model, with the tool and without
      plots/*.png           loss and reward curves
      report.md             everything above in one page

Each stage reads the previous model folder and writes its own. A stage that was
interrupted (Ctrl-C, SIGTERM, a kill) resumes from its last checkpoint when the same
command runs again; finished stages are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import __version__
from ..config.speedrun import check_speedrun_config, load_speedrun_config
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json, read_json
from ..utils.progress import console, rounded

STATE_FILE = "speedrun_state.json"
STAGES = ("tokenizer", "pretrain", "midtrain", "sft", "rl", "eval", "report")
MODEL_DIRS = {"pretrain": "base", "midtrain": "mid", "sft": "sft", "rl": "rl"}


# ------------------------------------------------------------------ environment
def environment() -> dict[str, Any]:
    """What the run ran on (for the report)."""
    import platform

    import torch

    from ..utils.device import bf16_supported, resolve_device

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = resolve_device("auto")
    return {"llm_foundry": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "bf16_fast": bf16_supported(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ------------------------------------------------------------------ evaluation
def evaluate_model(model_dir: str | Path, tasks: Iterable[str], examples: int, *, tools: bool = True,
                   max_tokens: int = 64, batch_size: int = 32, lang: str = "mixed",
                   keep_samples: int = 2) -> dict[str, Any]:
    """Greedy exact match of a chat model on held-out examples of built-in tasks (``eval/tasks.py``).

    Returns ``{task: {"accuracy", "correct", "n", "samples": [...]}}``; a sample is
    ``{"prompt", "completion", "answer", "score"}``.
    """
    from ..eval.tasks import builtin_task, evaluate_task
    from ..inference.engine import Engine

    engine = Engine.from_pretrained(model_dir, tools=tools)
    out: dict[str, Any] = {}
    for task in tasks:
        r = evaluate_task(engine, builtin_task(task, examples, lang=lang), batch_size=batch_size, max_tokens=max_tokens)
        out[task] = {"accuracy": r.accuracy, "correct": r.correct, "n": r.total, "samples": r.samples[:keep_samples]}
    return out


# ------------------------------------------------------------------ the run
def _same_settings(saved: Any, parsed) -> bool:
    """Whether a run folder's saved settings resolve to ``parsed`` (compared resolved, not as written:
    an older version kept an override like ``lr=1e-3`` as the text YAML read, this one as a number)."""
    try:
        return check_speedrun_config(saved).to_dict() == parsed.to_dict()
    except (FoundryError, TypeError, AttributeError):
        return False


class Speedrun:
    """One speedrun in a run folder.

    Args:
        out: the run folder.
        preset: a speedrun preset name or YAML file.
        overrides: ``section.key=value`` strings.
        data: the user's text (files or folders) instead of the built-in corpus.
        quiet: no progress display.
    """

    def __init__(self, out: str | Path, preset: str = "cpu", overrides: Iterable[str] = (),
                 data: Iterable[str | Path] | None = None, quiet: bool = False):
        self.out = Path(out)
        self.quiet = quiet
        self.data_inputs = [str(Path(d).resolve()) for d in data] if data else None
        self.config = load_speedrun_config(preset, list(overrides))
        self.parsed = check_speedrun_config(self.config)
        state_path = self.out / STATE_FILE
        if state_path.is_file():
            self.state = read_json(state_path, "speedrun state")
            if not _same_settings(self.state.get("config"), self.parsed) or self.state.get("data") != self.data_inputs:
                raise FoundryError(f"{self.out} holds a speedrun with other settings; re-run it with the same preset, "
                                   "overrides and --text, or choose another --out")
        else:
            if self.out.exists() and any(self.out.iterdir()):
                raise FoundryError(f"{self.out} exists and is not a speedrun folder; choose another --out")
            self.state = {"preset": preset, "config": self.config, "data": self.data_inputs, "stages": {},
                          "environment": environment()}
        self.state.setdefault("stages", {})

    # -------------------------------------------------------------- state
    def _save(self) -> None:
        atomic_write_json(self.out / STATE_FILE, self.state)

    def done(self, stage: str) -> bool:
        return bool(self.state["stages"].get(stage, {}).get("done"))

    def path(self, stage: str) -> Path:
        return self.out / MODEL_DIRS[stage]

    def _fresh_or_resume(self, folder: Path) -> bool:
        """Whether ``folder`` holds a checkpoint to resume; clears a stage that never saved one."""
        from ..models.model_dir import STATE_FILE as TRAIN_STATE, recover_checkpoint_dir

        if folder.is_dir():
            recover_checkpoint_dir(folder)  # a kill mid-save: take the old or the new checkpoint
        if (folder / TRAIN_STATE).is_file():
            return True
        if folder.exists():
            shutil.rmtree(folder)  # started but never checkpointed: nothing worth keeping
        return False

    # -------------------------------------------------------------- stages
    def stage_tokenizer(self, progress: Callable[[float], None]) -> dict:
        from ..data import builtin_corpus, prepare_dataset, read_documents, split_documents
        from ..data.chat import content_text
        from ..data.synthetic import TASKS, make_examples
        from ..tokenizers import build_tokenizer

        tc = self.config.get("tokenizer") or {}
        kind, vocab = tc.get("kind", "byte"), int(tc.get("vocab_size", 4096))
        docs = read_documents(self.data_inputs) if self.data_inputs else builtin_corpus()
        if kind == "bpe":
            # Merges come from the training text plus some chat text (numbers, Chinese, the task words),
            # so the chat stages do not meet a vocabulary made for Python's documentation only.
            train_docs, _ = split_documents(docs, 0.1, seed=0)
            chat = [" ".join(content_text(m["content"]) for m in ex.messages)
                    for t in TASKS for ex in make_examples(t, int(tc.get("chat_examples", 500)), seed=99)]
            tokenizer = build_tokenizer("bpe", [d.text for d in train_docs] + chat, vocab)
        else:
            tokenizer = build_tokenizer(kind)
        progress(0.5)
        meta = prepare_dataset(docs, tokenizer, self.out / "data", val_fraction=0.1, seed=0, show_progress=False)
        s = meta["splits"]
        return {"kind": meta["tokenizer"], "vocab_size": meta["vocab_size"], "documents": len(docs),
                "train_tokens": s["train"]["tokens"], "val_tokens": s.get("val", {}).get("tokens", 0),
                "bytes_per_token": round(s["train"]["bytes"] / max(s["train"]["tokens"], 1), 3)}

    def stage_pretrain(self, progress: Callable[[float], None]) -> dict:
        from ..training.trainer import Trainer

        folder = self.path("pretrain")
        resume = self._fresh_or_resume(folder)
        trainer = Trainer(self.parsed.model, self.parsed.pretrain, self.out / "data", folder, resume=resume, quiet=True)
        return trainer.run(on_step=lambda step, p: progress(p))

    def _chat_stage(self, stage: str, prev: str, progress: Callable[[float], None]) -> dict:
        import dataclasses

        from ..training.stages import run_stage

        cfg = getattr(self.parsed, stage)
        if "text" in cfg.mixture and not cfg.text_data:
            cfg = dataclasses.replace(cfg, text_data=str(self.out / "data"))
        folder = self.path(stage)
        resume = self._fresh_or_resume(folder)
        return run_stage(self.path(prev), folder, cfg, resume=resume, quiet=True, on_step=lambda s, p: progress(p))

    def stage_midtrain(self, progress) -> dict:
        return self._chat_stage("midtrain", "pretrain", progress)

    def stage_sft(self, progress) -> dict:
        return self._chat_stage("sft", "midtrain", progress)

    def stage_rl(self, progress) -> dict:
        from ..training.rl import run_rl

        folder = self.path("rl")
        resume = self._fresh_or_resume(folder)
        return run_rl(self.path("sft"), folder, self.parsed.rl, resume=resume, quiet=True, on_step=lambda s, p: progress(p))

    def eval_settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.parsed.eval)

    def stage_eval(self, progress: Callable[[float], None]) -> dict:
        ev = self.eval_settings()
        models = [("mid", "midtrain"), ("sft", "sft"), ("rl", "rl")]
        runs = [(name, stage, True, ev["tasks"]) for name, stage in models]
        runs.append(("rl", "rl", False, ev["no_tool_tasks"]))
        results_path = self.out / "eval" / "results.json"
        results = read_json(results_path, "eval results") if results_path.is_file() else {}
        for i, (name, stage, tools, tasks) in enumerate(runs):
            key = f"{name}{'' if tools else '_no_tools'}"
            if key not in results:  # each finished model is kept, so an interrupted eval resumes
                results[key] = evaluate_model(self.path(stage), tasks, ev["examples"], tools=tools,
                                              max_tokens=ev["max_tokens"], batch_size=ev["batch_size"],
                                              lang=ev["lang"], keep_samples=ev["samples"])
                atomic_write_json(results_path, results)
            progress((i + 1) / len(runs))
        summary = {f"{key}/{task}": round(r["accuracy"], 4) for key, res in results.items() for task, r in res.items()}
        return summary

    def stage_report(self, progress: Callable[[float], None]) -> dict:
        from ..eval.report import write_report

        path = write_report(self.out)
        return {"report": str(path)}

    # -------------------------------------------------------------- the loop
    def weights(self) -> dict[str, float]:
        """Expected seconds per stage, for one overall progress bar (a guide, not a promise)."""
        p = self.parsed

        def train_seconds(cfg, per_step: float) -> float:
            return float(cfg.time_budget) if cfg.time_budget else cfg.max_steps * per_step

        ev = self.eval_settings()
        n_eval = ev["examples"] * (3 * len(ev["tasks"]) + len(ev["no_tool_tasks"]))
        return {"tokenizer": 10.0, "pretrain": train_seconds(p.pretrain, 0.3),
                "midtrain": train_seconds(p.midtrain.train, 0.3), "sft": train_seconds(p.sft.train, 0.3),
                "rl": p.rl.steps * 3.0 + p.rl.eval_examples * len(p.rl.tasks) * 0.5,
                "eval": n_eval * 0.02 + 5, "report": 5.0}

    def run(self) -> dict:
        """Run every stage not yet done; returns the state (with each stage's summary and time).

        Raises:
            TrainingInterrupted: Ctrl-C/SIGTERM during a training stage (its checkpoint is saved).
        """
        from rich.progress import TextColumn

        from ..utils.progress import progress_bar

        self.out.mkdir(parents=True, exist_ok=True)
        self._save()
        weights = self.weights()
        total = sum(weights.values())
        done_before = [s for s in STAGES if self.done(s)]
        if done_before and not self.quiet:
            console.print(f"continuing {self.out}: done already: {', '.join(done_before)}")
        with progress_bar(not self.quiet, TextColumn("{task.fields[status]}")) as bar:
            task = bar.add_task("speedrun", total=total, status="")
            base = sum(weights[s] for s in done_before)
            bar.update(task, completed=base)
            for i, stage in enumerate(STAGES, 1):
                if self.done(stage):
                    continue
                label = f"[{i}/{len(STAGES)}] {stage}"
                bar.update(task, description=label, status="")
                w = weights[stage]

                def progress(frac: float, _base=base, _w=w) -> None:
                    bar.update(task, completed=_base + _w * min(max(frac, 0.0), 1.0))

                record = self.state["stages"].setdefault(stage, {})
                t0 = time.perf_counter()
                try:
                    summary = getattr(self, f"stage_{stage}")(progress)
                except BaseException:
                    # Keep the time already spent, so the report's stage times add up after a resume.
                    record["seconds_before"] = round(record.get("seconds_before", 0.0) + time.perf_counter() - t0, 1)
                    self._save()
                    raise
                seconds = round(record.pop("seconds_before", 0.0) + time.perf_counter() - t0, 1)
                record.update(done=True, summary=summary, seconds=seconds)
                self._save()
                base += w
                bar.update(task, completed=base)
                if not self.quiet:
                    bar.console.print(f"[green]done[/] {label} in {seconds:.0f}s: " + _short(summary))
        self.state["total_seconds"] = round(sum(s.get("seconds", 0.0) for s in self.state["stages"].values()), 1)
        self._save()
        return self.state


def _short(summary: dict, limit: int = 8) -> str:
    items = [f"{k} {rounded(v)}" for k, v in summary.items() if not isinstance(v, (dict, list))][:limit]
    return ", ".join(items)


def run_speedrun(out: str | Path, preset: str = "cpu", overrides: Iterable[str] = (),
                 data: Iterable[str | Path] | None = None, quiet: bool = False) -> dict:
    """Run (or continue) a speedrun in ``out``; returns its state."""
    return Speedrun(out, preset, overrides, data, quiet).run()


def read_state(run_dir: str | Path) -> dict:
    """The ``speedrun_state.json`` of a run folder."""
    return read_json(Path(run_dir) / STATE_FILE, "speedrun state")


def format_results(state: dict) -> str:
    """One line per stage with its time, for the CLI."""
    lines = []
    for stage in STAGES:
        s = state["stages"].get(stage)
        if s:
            lines.append(f"{stage:<9} {s.get('seconds', 0):>7.1f}s  {json.dumps(rounded(s.get('summary', {})), ensure_ascii=False)}")
    return "\n".join(lines)
