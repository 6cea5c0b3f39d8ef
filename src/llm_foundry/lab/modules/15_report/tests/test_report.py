"""Module 15 — the report (visible tests). Run them with `foundry lab test 15`.

Each test writes a run folder as our trainer leaves it: ``metrics.jsonl`` with a training record
every 5 steps (``step``, ``loss``, ``lr``, ``tokens``, ``tok_per_s``, ``time``, ``grad_norm``) and an
evaluation record every 20 (``val_loss``, ``val_perplexity``, ``val_bits_per_byte``), and — as a
run killed while writing leaves it — a torn last line. The numbers are made up but shaped like a
real run: the first window is slow (start-up), and the held-out loss is best at step 40, then rises.
"""

import json
import math
import re

from llm_foundry.lab.testing import check_equal, learner_line

from report import conclusions, plot_loss, read_metrics, series, summarize, write_report

LOG_INTERVAL, EVAL_INTERVAL, STEPS, TOKENS_PER_STEP = 5, 20, 60, 4096


def make_records(steps=STEPS, evals=True, overfit=True):
    """The records our trainer would log: a training record every LOG_INTERVAL steps, an evaluation
    every EVAL_INTERVAL (the held-out loss rises after step 40 when ``overfit``)."""
    records, time_s = [], 0.0
    for step in range(LOG_INTERVAL, steps + 1, LOG_INTERVAL):
        window_s = 4.0 if step == LOG_INTERVAL else 0.5  # the first window waits for start-up
        time_s += window_s
        loss = round(1.5 + 3.0 * math.exp(-step / 25) + 0.01 * (step % 3), 5)
        records.append({"step": step, "loss": loss, "lr": round(3e-3 * min(1.0, step / 10), 6),
                        "tokens": step * TOKENS_PER_STEP, "trained_tokens": LOG_INTERVAL * TOKENS_PER_STEP,
                        "tok_per_s": round(LOG_INTERVAL * TOKENS_PER_STEP / window_s, 1), "time": round(time_s, 2),
                        "grad_norm": round(2.0 / (1 + step / 10), 5)})
        if evals and step % EVAL_INTERVAL == 0:
            val = 1.6 + 3.0 * math.exp(-step / 25) + (0.6 * (step - 40) / 20 if overfit and step > 40 else 0.0)
            records.append({"step": step, "val_loss": round(val, 5), "val_perplexity": round(math.exp(val), 5),
                            "val_bits_per_byte": round(val / math.log(2) / 3.2, 5)})
    return records


def write_run(folder, records, torn=True):
    """``folder/metrics.jsonl`` with ``records``, one a line, plus a torn last line."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + ('{"step": 65, "loss": 1.7' if torn else "")
    (folder / "metrics.jsonl").write_text(text, encoding="utf-8")
    return folder


def table(markdown, heading):
    """The body rows (lists of cells; the header row left out) of the first table under ``## heading``."""
    part = markdown.split(f"## {heading}", 1)
    assert len(part) == 2, f"the report has no '## {heading}' section; it reads:\n{markdown[:600]}"
    rows = []
    for line in part[1].splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line.strip()):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    records = make_records()
    run = write_run(tmp_path / "run", records)
    try:
        got = read_metrics(run / "metrics.jsonl")
    except json.JSONDecodeError as e:
        raise AssertionError(f"read_metrics(metrics.jsonl){learner_line(read_metrics)} raised {e!r} on the torn last "
                             "line that a run killed mid-write leaves: skip a line that does not parse") from None
    check_equal("read_metrics(metrics.jsonl) (a log ending in a torn line)", got, records, where=read_metrics)
    check_equal("read_metrics(a missing file)", read_metrics(tmp_path / "nowhere.jsonl"), [], where=read_metrics)


def test_series_pairs_each_value_with_its_step():
    records = make_records()
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    got = series(records, "loss")
    hint = ""
    if isinstance(got, tuple) and len(got) == 2 and list(got[0]) == list(range(len(got[1]))):
        hint = ("your x values count the records 0, 1, 2, …, but the log has one every 5 steps: you plot against "
                "the record index; take each record's own 'step'")
    check_equal('series(records, "loss")', got, ([r["step"] for r in train], [r["loss"] for r in train]),
                where=series, hint=hint)
    check_equal('series(records, "val_loss")', series(records, "val_loss"),
                ([r["step"] for r in val], [r["val_loss"] for r in val]), where=series,
                hint="only the evaluation records have val_loss: skip the others")


def test_summarize_reads_the_run():
    records = make_records()
    got = summarize(records)
    assert isinstance(got, dict), f"summarize(records){learner_line(summarize)}: expected a dict, got {got!r}"
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    want = {"steps": 60, "first_loss": train[0]["loss"], "final_loss": train[-1]["loss"],
            "best_val_loss": val[1]["val_loss"], "best_val_step": 40, "final_val_loss": val[-1]["val_loss"],
            "tok_per_s": 60 * TOKENS_PER_STEP / 9.5, "train_time": 9.5}
    assert want["best_val_loss"] == min(r["val_loss"] for r in val)
    for key in ("steps", "first_loss", "final_loss"):
        check_equal(f"summarize(records)[{key!r}]", got.get(key), want[key], where=summarize)
    hint = ""
    if got.get("best_val_loss") == want["final_val_loss"]:
        hint = "that is the last evaluation's: the best held-out loss is the minimum over the evaluations"
    check_equal("summarize(records)['best_val_loss']", got.get("best_val_loss"), want["best_val_loss"],
                where=summarize, hint=hint)
    for key in ("best_val_step", "final_val_loss", "train_time"):
        check_equal(f"summarize(records)[{key!r}]", got.get(key), want[key], where=summarize)
    rate = got.get("tok_per_s")
    windows = [r["tok_per_s"] for r in records if "tok_per_s" in r]
    hint = ""
    if isinstance(rate, (int, float)) and abs(rate - sum(windows) / len(windows)) < 1:
        hint = ("that is the mean of the windows' tok_per_s, which counts the slow 4-second first window like a "
                "0.5-second one: the run's throughput is its tokens / time (the last record's totals)")
    assert isinstance(rate, (int, float)) and abs(rate - want["tok_per_s"]) < 1e-6 * want["tok_per_s"], (
        f"summarize(records)['tok_per_s']{learner_line(summarize)}: expected {want['tok_per_s']:.6g} "
        f"(tokens / time), got {rate!r}" + (f". {hint}" if hint else ""))


def test_plot_loss_draws_the_logged_values(tmp_path):
    records = make_records()
    path = tmp_path / "loss.png"
    fig = plot_loss(records, path)
    where = learner_line(plot_loss)
    assert hasattr(fig, "axes") and fig.axes, f"plot_loss(records, path){where}: expected the matplotlib figure, got {fig!r}"
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for label, key in (("train loss", "loss"), ("held-out loss", "val_loss")):
        assert label in lines, (f"plot_loss(records, path){where}: no line labelled {label!r} in the figure "
                                f"(its lines: {sorted(lines)}); pass label={label!r} to ax.plot")
        xs, ys = series(records, key)
        check_equal(f"plot_loss: the x values of the {label!r} line", [float(x) for x in lines[label].get_xdata()],
                    [float(x) for x in xs], where=plot_loss)
        check_equal(f"plot_loss: the y values of the {label!r} line", [float(y) for y in lines[label].get_ydata()],
                    [float(y) for y in ys], where=plot_loss)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (
        f"plot_loss(records, path){where}: no PNG at {path.name}: fig.savefig(path)")


def test_conclusions_see_overfitting():
    over = summarize(make_records(overfit=True))
    said = conclusions(over)
    where = learner_line(conclusions)
    assert isinstance(said, list) and all(isinstance(s, str) for s in said), (
        f"conclusions(summary){where}: expected a list of sentences, got {said!r}")
    text = " ".join(said)
    assert "overfit" in text and "step 40" in text, (
        f"conclusions(summary){where}: the held-out loss rose from {over['best_val_loss']} at step 40 to "
        f"{over['final_val_loss']}; expected a sentence "
        f"that says the model overfits and names step 40, got {said}")
    assert "fell" in text, (f"conclusions(summary){where}: the training loss fell from {over['first_loss']} to {over['final_loss']}: "
                            f"say so ('fell'); got {said}")
    fine = " ".join(conclusions(summarize(make_records(overfit=False))))
    assert "overfits" not in fine, (
        f"conclusions(summary){where}: the held-out loss is at its best at the end, but you say the model overfits: "
        f"{fine!r}")


def test_write_report_tables_hold_the_logged_values(tmp_path):
    records = make_records()
    run = write_run(tmp_path / "tiny-run", records)
    out = tmp_path / "report"
    path = write_report(run, out)
    where = learner_line(write_report)
    check_equal("write_report(run, out) (the path it returns)", str(path), str(out / "report.md"), where=write_report)
    md = (out / "report.md").read_text(encoding="utf-8")
    summary = dict((row[0], row[1]) for row in table(md, "Summary") if len(row) >= 2)
    for key, value in summarize(records).items():
        assert key in summary, f"write_report{where}: the Summary table has no row {key!r}; its rows: {sorted(summary)}"
        assert math.isclose(float(summary[key].replace(",", "")), value, rel_tol=1e-3), (
            f"write_report{where}: Summary row {key!r} reads {summary[key]!r}, the log says {value:.6g}")
    rows = table(md, "Held-out loss")
    val = [r for r in records if "val_loss" in r]
    check_equal("write_report: the steps of the Held-out loss table", [row[0] for row in rows],
                [str(r["step"]) for r in val], where=write_report)
    for row, r in zip(rows, val):
        assert math.isclose(float(row[1]), r["val_loss"], rel_tol=1e-3), (
            f"write_report{where}: the held-out loss of step {r['step']} reads {row[1]!r}, the log says {r['val_loss']}")
    assert "![loss](loss.png)" in md and (out / "loss.png").is_file(), (
        f"write_report{where}: expected the chart out/loss.png and the line ![loss](loss.png) in the report")
    assert "overfit" in md.split("## Conclusions", 1)[-1], f"write_report{where}: the Conclusions section lacks the overfitting finding"
