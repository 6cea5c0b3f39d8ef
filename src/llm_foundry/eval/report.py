"""``report.md`` for a run folder: environment, stages, curves, eval tables, samples (nanochat's ``report.py``).

The report is rebuilt from what the run left on disk — ``speedrun_state.json``, each
stage folder's settings and ``metrics.jsonl``, ``eval/results.json`` and the RL
stage's ``rl_eval.json`` — so it can be written again at any time, also for a run
that is still going or was stopped half-way. Plots are PNG files under ``plots/``
(matplotlib, Agg backend: no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tokenizers.special import ASSISTANT_END, BOS, OUTPUT_END, OUTPUT_START, PAD, PYTHON_END, PYTHON_START
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_text, read_log_records

STAGE_FOLDERS = (("pretrain", "base"), ("midtrain", "mid"), ("sft", "sft"), ("rl", "rl"))
SETTINGS_FILES = ("run_config.json", "stage_config.json", "rl_config.json")


def read_metrics(folder: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a torn last line is skipped)."""
    return read_log_records(folder / "metrics.jsonl")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(run: Path, stages: dict[str, list[dict]]) -> dict[str, str]:
    """Write the PNG plots; returns ``{name: relative path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = run / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for stage in ("pretrain", "midtrain", "sft"):
        records = stages.get(stage) or []
        xs, ys = _series(records, "loss")
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(xs, ys, label="train loss")
        vx, vy = _series(records, "val_loss")
        if vx:
            ax.plot(vx, vy, "o-", label="held-out loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"{stage} loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        name = f"{stage}_loss.png"
        fig.savefig(plots_dir / name, dpi=100)
        plt.close(fig)
        written[stage] = f"plots/{name}"
    xs, ys = _series(stages.get("rl") or [], "reward")
    if xs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(xs, ys, alpha=0.4, label="mean reward per step")
        k = max(1, len(ys) // 10)
        smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, label=f"moving mean ({k} steps)")
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("rl reward")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plots_dir / "rl_reward.png", dpi=100)
        plt.close(fig)
        written["rl"] = "plots/rl_reward.png"
    return written


def _stage_of(folder: Path) -> str:
    """The stage a single run folder holds, from its settings file."""
    if (folder / "rl_config.json").is_file():
        return "rl"
    stage = (_read(folder / "stage_config.json") or {}).get("stage")
    return stage if stage in ("midtrain", "sft") else "pretrain"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _readable(text: str) -> str:
    """A completion with its special tokens turned into short visible markers."""
    for tok, shown in ((PYTHON_START, "[calc: "), (PYTHON_END, "]"), (OUTPUT_START, " → "),
                       (OUTPUT_END, " "), (ASSISTANT_END, ""), (BOS, ""), (PAD, "")):
        text = text.replace(tok, shown)
    # A reply cut at the token limit can end inside a character's bytes: show an ellipsis.
    cut = text.rstrip("\ufffd")
    return (cut + "…" if cut != text else text).strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def build_report(run_dir: str | Path) -> str:
    """The markdown of the report (and its plots, written under ``RUN/plots``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FoundryError(f"run folder not found: {run}")
    state = _read(run / "speedrun_state.json") or {}
    folders = {stage: run / name for stage, name in STAGE_FOLDERS if (run / name).is_dir()}
    if not state and not folders and (run / "metrics.jsonl").is_file():
        folders = {_stage_of(run): run}  # a plain `foundry train` (or one stage's) run folder: one stage
    if not state and not folders:
        raise FoundryError(f"{run} is neither a run folder (metrics.jsonl) nor a speedrun folder nor holds "
                           f"stage folders (base/, mid/, sft/, rl/)")
    metrics = {stage: read_metrics(folder) for stage, folder in folders.items()}
    plots = plot_curves(run, metrics)
    env = state.get("environment") or {}
    done = state.get("stages") or {}
    lines = [f"# Report: {run.name}", ""]
    if state:
        total = state.get("total_seconds") or sum(s.get("seconds", 0) for s in done.values())
        lines += [f"Speedrun preset `{state.get('preset')}`; stages done: "
                  f"{', '.join(s for s, v in done.items() if v.get('done')) or 'none'}; "
                  f"total wall time {total / 60:.1f} min.", ""]
    if env:
        lines += ["## Environment", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {_cell(_fmt(v))} |" for k, v in env.items() if v is not None]
        lines.append("")

    # ---- stages: time and final metrics
    lines += ["## Stages", "", "| stage | time | result |", "|---|---|---|"]
    for stage in ("tokenizer", "pretrain", "midtrain", "sft", "rl", "eval", "report"):
        info = done.get(stage)
        recs = metrics.get(stage) or []
        if info is None and not recs:
            continue
        summary = (info or {}).get("summary") or {}
        if not summary and recs:
            last = recs[-1]
            summary = {k: last[k] for k in ("step", "loss", "reward", "val_loss") if k in last}
        shown = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        if stage == "eval":
            shown = {"models evaluated": len({k.split("/")[0] for k in summary})}
        seconds = (info or {}).get("seconds")
        status = f"{seconds:.0f} s" if seconds is not None and (info or {}).get("done") else "not finished"
        if not state and recs:  # one run folder: its training time so far, as its log has it
            status = f"{max(r.get('time', 0) for r in recs):.0f} s training"
        lines.append(f"| {stage} | {status} | {_cell(', '.join(f'{k} {_fmt(v)}' for k, v in shown.items()))} |")
    lines.append("")

    # ---- eval tables
    results = _read(run / "eval" / "results.json") or {}
    if results:
        lines += ["## Evaluation", "",
                  "Greedy exact match on held-out templates, number ranges and words (`foundry speedrun` eval stage).", ""]
        tasks = sorted({t for res in results.values() for t in res})
        lines += ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for key, res in results.items():
            label = key.replace("_no_tools", " (tool off)")
            cells = [f"{res[t]['accuracy'] * 100:.1f}% ({res[t]['correct']:g}/{res[t]['n']})" if t in res else "–" for t in tasks]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        if "rl" in results and "rl_no_tools" in results and "arithmetic" in results["rl_no_tools"]:
            on, off = results["rl"]["arithmetic"]["accuracy"], results["rl_no_tools"]["arithmetic"]["accuracy"]
            lines += [f"Arithmetic with the calculator: {on * 100:.1f}%; the same model with tool use off: {off * 100:.1f}%.", ""]

    # ---- RL reward before / after
    rl_eval = _read(run / "rl" / "rl_eval.json") if (run / "rl").is_dir() else None
    if rl_eval and rl_eval.get("before"):
        b, a = rl_eval["before"], rl_eval.get("after")
        rl_cfg = _read(run / "rl" / "rl_config.json") or {}
        lines += ["## RL", "",
                  f"Mean reward, {rl_cfg.get('eval_samples', '?')} samples per prompt at temperature "
                  f"{rl_cfg.get('temperature', '?')}, on {', '.join(rl_cfg.get('tasks', []))}: "
                  f"{b.get('task_prompts', '?')} fresh prompts of the training distribution ({rl_cfg.get('split', 'train')} split: "
                  f"the task RL optimises) "
                  f"and {b['prompts']} held-out prompts (new wording and numbers):", "",
                  "| model | reward, task | reward, held-out | greedy accuracy, held-out |", "|---|---|---|---|"]
        rows = [("SFT (before RL)", b)] + ([(f"RL (after {rl_eval.get('after_step', '?')} steps)", a)] if a else [])
        for name, r in rows:  # a run begun by an older version has no task reward: "–"
            task = f"{r['task_mean_reward']:.3f}" if "task_mean_reward" in r else "–"
            lines.append(f"| {name} | {task} | {r['mean_reward']:.3f} | {r['greedy_accuracy']:.3f} |")
        lines.append("")

    # ---- curves
    if plots:
        lines += ["## Curves", ""]
        for stage, rel in plots.items():
            lines += [f"![{stage}]({rel})", ""]

    # ---- samples
    if results:
        lines += ["## Sample conversations", ""]
        key = "rl" if "rl" in results else next(iter(results))
        for task, res in results[key].items():
            for s in res.get("samples", [])[:2]:
                mark = "✓" if s.get("score") else "✗"
                lines += [f"- **{task}** {mark} — user: {_cell(str(s['prompt']))}",
                          f"  assistant: `{_cell(_readable(s['completion']))}` (expected {_cell(str(s['answer']))})"]
        lines.append("")

    # ---- settings
    lines += ["## Settings", ""]
    if state.get("config"):
        import yaml

        lines += ["Speedrun settings (preset with overrides applied):", "", "```yaml",
                  yaml.safe_dump(state["config"], sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    for stage, folder in folders.items():
        for name in SETTINGS_FILES:
            data = _read(folder / name)
            if data:
                lines += [f"<details><summary>{stage}: {name}</summary>", "", "```json",
                          json.dumps(data, indent=1, ensure_ascii=False), "```", "", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.md`` (and ``RUN/plots/*.png``); returns the report's path."""
    run = Path(run_dir)
    text = build_report(run)
    path = run / "report.md"
    atomic_write_text(path, text)
    return path
