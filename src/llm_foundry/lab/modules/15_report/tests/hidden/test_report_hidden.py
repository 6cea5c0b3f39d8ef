"""Module 15 — the report (hidden tests: a log with odd lines read as our library reads it, the PNG
itself shows the logged points, a run without evaluations, a loss that does not fall, and the
report's file handling)."""

import json

from llm_foundry.eval.report import read_metrics as our_read_metrics
from llm_foundry.lab.testing import check_equal, learner_line

from report import conclusions, plot_loss, read_metrics, summarize, write_report
from test_report import make_records, table, write_run


def test_read_metrics_reads_odd_lines_as_ours(tmp_path):
    records = make_records(steps=20)
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in records]
    lines[1:1] = ["", "[1, 2]", '"a string"', '{"step": 7, "loss": 3.'  # a blank line, non-objects, a torn line
                  ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        got = read_metrics(path)
    except (ValueError, TypeError, KeyError) as e:
        raise AssertionError(f"read_metrics{learner_line(read_metrics)} raised {e!r} on a log with a blank line, a "
                             "JSON list, a JSON string and a torn line: keep only the lines that are JSON objects") from None
    check_equal("read_metrics(a log with a blank line, a list, a string and a torn line)", got,
                our_read_metrics(tmp_path), where=read_metrics)


def test_the_png_shows_the_logged_points(tmp_path):
    import matplotlib.colors
    import matplotlib.image

    records = make_records()
    path = tmp_path / "loss.png"
    fig = plot_loss(records, path)
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    scale = width / (fig.get_figwidth() * fig.dpi)  # pixels of the PNG per display unit
    ax = fig.axes[0]
    for line in ax.get_lines():
        color = matplotlib.colors.to_rgb(line.get_color())
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            px, py = ax.transData.transform((x, y)) * scale
            col, row = int(round(px)), int(round(height - py))
            window = image[max(0, row - 3):row + 4, max(0, col - 3):col + 4, :3]
            near = ((window - color) ** 2).sum(-1).min() if window.size else 9.0
            assert near < 0.1, (
                f"plot_loss{learner_line(plot_loss)}: the PNG shows no {line.get_label()!r} line at the logged point "
                f"(step {x}, {y}) — pixel ({col}, {row}) of {width}×{height}. Save the whole figure as it was drawn: "
                "fig.savefig(path) after tight_layout, without bbox_inches='tight'")


def test_a_run_without_evaluations(tmp_path):
    records = make_records(evals=False)
    got = summarize(records)
    for key in ("best_val_loss", "best_val_step", "final_val_loss"):
        check_equal(f"summarize(records without evaluations)[{key!r}]", got.get(key), None, where=summarize)
    fig = plot_loss(records, tmp_path / "loss.png")
    check_equal("plot_loss(records without evaluations): the labels of its lines",
                [line.get_label() for line in fig.axes[0].get_lines()], ["train loss"], where=plot_loss)
    said = " ".join(conclusions(got))
    assert "overfit" not in said, f"conclusions{learner_line(conclusions)}: no evaluation, so nothing to say about overfitting: {said!r}"
    run = write_run(tmp_path / "run", records, torn=False)
    md = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    assert "## Held-out loss" not in md, f"write_report{learner_line(write_report)}: no evaluations, so no Held-out loss table"
    rows = dict((r[0], r[1]) for r in table(md, "Summary"))
    assert "best_val_loss" not in rows and rows.get("steps") == "60", (
        f"write_report{learner_line(write_report)}: the Summary of a run without evaluations should have no "
        f"best_val_loss row (None) and steps 60; it has {rows}")


def test_a_loss_that_does_not_fall():
    records = [{"step": s, "loss": 2.0 + 0.01 * s, "tokens": 100 * s, "time": 0.1 * s} for s in (1, 2, 3)]
    said = " ".join(conclusions(summarize(records)))
    assert "did not fall" in said, (
        f"conclusions{learner_line(conclusions)}: the loss went from 2.01 to 2.03; expected 'did not fall', got {said!r}")


def test_report_files(tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    try:
        write_report(empty, tmp_path / "out")
    except FileNotFoundError as e:
        assert "empty-run" in str(e), f"write_report{learner_line(write_report)}: the error should name the folder: {e}"
    else:
        raise AssertionError(f"write_report(a folder without metrics.jsonl){learner_line(write_report)}: expected "
                             "FileNotFoundError naming it")
    run = write_run(tmp_path / "run", make_records())
    out = tmp_path / "nested" / "out"
    write_report(run, out)
    first = (out / "report.md").read_text(encoding="utf-8")
    write_report(run, out)  # again: replaces the report
    check_equal("write_report twice: the report", (out / "report.md").read_text(encoding="utf-8"), first,
                where=write_report)
    check_equal("write_report: the files left in out/", sorted(p.name for p in out.iterdir()),
                ["loss.png", "report.md"], where=write_report,
                hint="a temporary file of the atomic write must be renamed over report.md, not left behind")
