"""Module 15 — the report: from a run's ``metrics.jsonl`` to ``report.md`` and its chart.

Ours is ``src/llm_foundry/eval/report.py`` (``read_metrics``, ``_series``, ``plot_curves``,
``build_report``, ``write_report``): it rebuilds the report from what a run left on disk, so it can
be written again at any time, also for a run that is still going or was killed half-way.

A training record of ``metrics.jsonl`` (one JSON object a line, appended by the trainer)::

    {"step": 20, "loss": 3.41, "lr": 0.003, "tokens": 81920, "tok_per_s": 10444.5, "time": 7.9, "grad_norm": 0.8}

and an evaluation record: ``{"step": 20, "val_loss": 3.52, "val_perplexity": 33.8, "val_bits_per_byte": 1.6}``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl`` at ``path``, in order.

    A missing file is an empty log; a line that does not parse — the torn last line of a run that
    was killed while writing — and a line that is not a JSON object are skipped, never an error.
    """
    # BEGIN SOLUTION read_metrics
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line: the run was killed while appending it
        if isinstance(record, dict):
            records.append(record)
    return records
    # END SOLUTION


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key`` over the records that have both ``step`` and ``key``."""
    # BEGIN SOLUTION series
    points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
    return [step for step, _ in points], [value for _, value in points]
    # END SOLUTION


def summarize(records: list[dict]) -> dict:
    """The run in numbers: ``steps``, ``first_loss``, ``final_loss`` (training records),
    ``best_val_loss``, ``best_val_step``, ``final_val_loss`` (evaluation records; None without any),
    ``tok_per_s`` (the whole run's throughput) and ``train_time`` (seconds).

    Raises:
        ValueError: no record has a training ``loss``.
    """
    # BEGIN SOLUTION summarize
    train = [r for r in records if "loss" in r and "step" in r]
    val = [r for r in records if "val_loss" in r and "step" in r]
    if not train:
        raise ValueError("no training records (none has a 'loss')")
    last = train[-1]
    best = min(val, key=lambda r: r["val_loss"]) if val else None
    time_s = last.get("time")
    return {
        "steps": last["step"],
        "first_loss": train[0]["loss"],
        "final_loss": last["loss"],
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_step": best["step"] if best else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        # tokens and time are totals since the start: their ratio weighs every second the same,
        # where a mean of the windows' tok_per_s would let a short slow window count as a long one
        "tok_per_s": last["tokens"] / time_s if time_s and "tokens" in last else None,
        "train_time": time_s,
    }
    # END SOLUTION


def plot_loss(records: list[dict], path: str | Path):
    """Draw the training loss (a line, label ``train loss``) and the held-out loss (points joined,
    label ``held-out loss``, only when there are evaluations) against the step; save it as a PNG
    at ``path`` and return the matplotlib figure (closed: its data stays readable)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into memory and write a file
    import matplotlib.pyplot as plt

    # BEGIN SOLUTION plot_loss
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs, ys = series(records, "loss")
    ax.plot(xs, ys, label="train loss")
    vx, vy = series(records, "val_loss")
    if vx:
        ax.plot(vx, vy, "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig
    # END SOLUTION


def conclusions(summary: dict) -> list[str]:
    """What the numbers say, one sentence each: whether the training loss fell, whether the
    held-out loss shows overfitting (its last value more than 1 % above its best: name the best
    step), and the throughput."""
    # BEGIN SOLUTION conclusions
    s = summary
    fell = s["final_loss"] < s["first_loss"]
    out = [f"The training loss {'fell' if fell else 'did not fall'} from {s['first_loss']:.4g} to "
           f"{s['final_loss']:.4g} in {s['steps']} steps."]
    if s["best_val_loss"] is not None:
        if s["final_val_loss"] > 1.01 * s["best_val_loss"]:
            out.append(f"The held-out loss was best at step {s['best_val_step']} ({s['best_val_loss']:.4g}) and "
                       f"rose to {s['final_val_loss']:.4g} since: the model overfits; keep the checkpoint of step "
                       f"{s['best_val_step']}, or train on more data.")
        else:
            out.append(f"The held-out loss is at its best near the end ({s['final_val_loss']:.4g}): no sign of "
                       "overfitting, so more steps may still help.")
    if s["tok_per_s"]:
        out.append(f"Throughput: {s['tok_per_s']:,.0f} tokens/s over {s['train_time']:.4g} s of training.")
    return out
    # END SOLUTION


def _fmt(value) -> str:
    """A table cell: floats to 4 significant digits, as our report prints them."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir/report.md`` and its chart ``out_dir/loss.png`` from ``run_dir/metrics.jsonl``;
    returns the report's path.

    The report has a ``## Summary`` table (``| metric | value |``, one row per :func:`summarize`
    field that is not None), a ``## Held-out loss`` table (``| step | val_loss | val_perplexity |``,
    one row per evaluation; left out without evaluations), the chart (``![loss](loss.png)``) and
    ``## Conclusions`` (a ``- `` line each). The report is written atomically.

    Raises:
        FileNotFoundError: ``run_dir`` has no records in ``metrics.jsonl`` (the message names it).
    """
    # BEGIN SOLUTION write_report
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise FileNotFoundError(f"no metrics in {run_dir / 'metrics.jsonl'}: is it a run folder?")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    plot_loss(records, out_dir / "loss.png")
    lines = [f"# Report: {run_dir.name}", "", "## Summary", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in summary.items() if value is not None]
    val = [r for r in records if "val_loss" in r and "step" in r]
    if val:
        lines += ["", "## Held-out loss", "", "| step | val_loss | val_perplexity |", "|---|---|---|"]
        lines += [f"| {r['step']} | {_fmt(r['val_loss'])} | {_fmt(r.get('val_perplexity', '–'))} |" for r in val]
    lines += ["", "## Curves", "", "![loss](loss.png)", "", "## Conclusions", ""]
    lines += [f"- {sentence}" for sentence in conclusions(summary)]
    # atomic: write a temporary file in the same folder, then rename it over the report
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".report-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, out_dir / "report.md")
    return out_dir / "report.md"
    # END SOLUTION
