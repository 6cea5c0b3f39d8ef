"""Module 8 — mid-training (hidden tests: zero weights and ties, other seeds, the schedule's edges)."""

import math

import pytest
import torch

from llm_foundry.data.synthetic import make_mixture
from llm_foundry.lab.testing import check_close, check_equal, learner_line
from llm_foundry.training.schedule import lr_factor as our_lr_factor

from midtrain import draw_sources, lr_factor, mixture_counts, mixture_order
from test_midtrain import ours_counts


def test_counts_with_ties_and_a_zero_weight():
    weights = {"facts": 1.0, "spelling": 0.0, "copy": 1.0, "identity": 1.0}
    for n in (0, 2, 5, 11):
        want = {name: ours_counts(weights, n).get(name, 0) for name in weights}
        check_equal(f"mixture_counts({weights}, {n})", mixture_counts(weights, n), want, where=mixture_counts,
                    hint="equal weights share the remainder in the order given (a stable sort)")


def test_order_for_other_seeds_and_weights():
    weights = {"copy": 3.0, "facts": 1.0, "identity": 2.0}
    for seed in (5, 123):
        want = [ex.task for ex in make_mixture(weights, 30, seed=seed, lang="en")]
        check_equal(f"mixture_order({weights}, 30, seed={seed})", mixture_order(weights, 30, seed), want,
                    where=mixture_order)


def test_draws_never_pick_a_zero_weight():
    got = draw_sources({"a": 1.0, "b": 0.0, "c": 3.0}, 2000, 0)
    assert "b" not in got, f"draw_sources with weight 0 for 'b'{learner_line(draw_sources)} drew 'b'"
    share = got.count("c") / len(got)
    assert abs(share - 0.75) < 0.04, f"draw_sources{learner_line(draw_sources)}: 'c' (weight 3 of 4) came {share:.3f}"


def test_lr_factor_edges():
    cases = [(0, -0.5, "cosine", 0, 0.2, 0.2), (50, 1.7, "wsd", 0, 0.1, 0.3), (3, 0.0, "cosine", 20, 0.0, 0.2),
             (19, 0.5, "wsd", 20, 0.0, 1.0), (80, 0.8, "wsd", 0, 0.0, 0.2), (90, 0.9, "wsd", 0, 0.05, 0.2)]
    for step, progress, schedule, warmup, floor, decay in cases:
        want = our_lr_factor(step, progress, schedule, warmup, floor, decay)
        got = lr_factor(step, progress, schedule, warmup, floor, decay)
        check_close(f"lr_factor({step}, {progress}, {schedule!r}, {warmup}, {floor}, {decay})",
                    torch.tensor(float(got) if isinstance(got, (int, float)) else math.nan), torch.tensor(want),
                    atol=1e-12, rtol=0, where=lr_factor)
    with pytest.raises(ValueError):
        lr_factor(50, 0.5, "linear", 0, 0.0)
        raise AssertionError(f"lr_factor with schedule 'linear'{learner_line(lr_factor)} returned instead of raising "
                             "ValueError: an unknown schedule is a mistake to report, not to guess")
