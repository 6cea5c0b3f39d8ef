"""Charts from a test run: the metrics a module's tests print, gathered for the page's charts.

A test reports a measurement by printing one line (pytest captures it; the runner keeps each
test's output, up to 2,000 characters)::

    LAB-METRIC {"kind": "line", "name": "loss", "step": 10, "value": 2.31}
    LAB-METRIC {"kind": "radar", "name": "eval", "axis": "arithmetic", "value": 0.7}
    LAB-METRIC {"kind": "heatmap", "name": "loss by lr and batch", "x": "3e-4", "y": "32", "value": 2.4}
    LAB-METRIC {"kind": "compare", "name": "tokens/s", "mine": 1200, "reference": 45000}

``line`` draws a curve per name (loss, accuracy), ``radar`` one polygon per name (a multi-task
evaluation), ``heatmap`` a grid per name (a configuration against performance), ``compare`` bars
of the learner's implementation against the reference. The other lines a test printed between
two points of a curve are that moment's log (clicking the point on the page shows them).
"""

from __future__ import annotations

import json

PREFIX = "LAB-METRIC "


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gather(results: dict) -> dict:
    """The charts of one results.json object: ``{"line", "radar", "heatmap", "compare"}``."""
    line: dict[str, list[dict]] = {}
    radar: dict[str, list[dict]] = {}
    heat: dict[str, dict] = {}
    compare: list[dict] = []
    for test in results.get("tests", []):
        log: list[str] = []
        for text in str(test.get("output") or "").splitlines():
            if not text.startswith(PREFIX):
                log.append(text)
                continue
            try:
                m = json.loads(text[len(PREFIX):])
            except ValueError:
                log.append(text)
                continue
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                continue
            name, kind = m["name"][:80], m.get("kind")
            if kind == "line" and _number(m.get("step")) is not None and _number(m.get("value")) is not None:
                line.setdefault(name, []).append({"step": m["step"], "value": m["value"], "test": test["name"],
                                                  "log": log[-20:]})
                log = []
            elif kind == "radar" and isinstance(m.get("axis"), str) and _number(m.get("value")) is not None:
                radar.setdefault(name, []).append({"axis": m["axis"][:40], "value": m["value"]})
            elif kind == "heatmap" and _number(m.get("value")) is not None:
                grid = heat.setdefault(name, {"x": [], "y": [], "cells": []})
                x, y = str(m.get("x")), str(m.get("y"))
                for axis, v in (("x", x), ("y", y)):
                    if v not in grid[axis]:
                        grid[axis].append(v)
                grid["cells"].append([grid["x"].index(x), grid["y"].index(y), m["value"]])
            elif kind == "compare" and _number(m.get("mine")) is not None and _number(m.get("reference")) is not None:
                compare.append({"name": name, "mine": m["mine"], "reference": m["reference"]})
    return {"line": line, "radar": radar, "heatmap": heat, "compare": compare}
