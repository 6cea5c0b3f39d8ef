"""Module 4 — the window loader (visible tests). Run them with `foundry lab test 4`.

The shards are made so that every token says where it is: token = 100000·shard + position.
A window is then recognised by its first token, and a window that crosses a shard or skips
a token shows at once.
"""

import numpy as np
import torch

from llm_foundry.data.loader import WindowLoader
from llm_foundry.lab.testing import check_equal

from loader import EpochLoader, random_batch, window_starts


def make_shards(lengths):
    return [100000 * s + np.arange(n, dtype=np.int64) for s, n in enumerate(lengths)]


class Prepared:
    """The one thing WindowLoader reads from a prepared data folder: its split's shards."""

    def __init__(self, shards):
        self.shards = shards

    def split(self, name):
        return self.shards


def first_tokens(x):
    return [int(t) for t in x[:, 0]]


def test_random_batch_shapes_and_targets():
    x, y = random_batch(make_shards([50, 80]), batch_size=4, seq_len=8, seed=0, index=0)
    check_equal("random_batch(..., batch_size=4, seq_len=8).x.shape", tuple(x.shape), (4, 8), where=random_batch)
    check_equal("random_batch(...).y.shape", tuple(y.shape), (4, 8), where=random_batch)
    check_equal("random_batch(...): y[:, :-1] == x[:, 1:]", y[:, :-1].tolist(), x[:, 1:].tolist(), where=random_batch,
                hint="y is x shifted left by one: the target of each position is the next token")
    check_equal("random_batch(...).x.dtype", x.dtype, torch.int64, where=random_batch)


def test_random_batch_is_our_trainers_batch():
    shards = make_shards([40, 300, 9, 120])
    ours = WindowLoader(Prepared(shards), "train", batch_size=6, seq_len=10, seed=7)
    for index in range(4):
        x, y = random_batch(shards, 6, 10, seed=7, index=index)
        want_x, want_y = ours.batch(index)
        check_equal(f"random_batch(shards, 6, 10, seed=7, index={index}) first tokens", first_tokens(x),
                    first_tokens(want_x), where=random_batch,
                    hint="the same generator calls in the same order as WindowLoader.batch: "
                         "rng.choice(shards, p=...) for all rows first, then one rng.integers per row")
        check_equal(f"random_batch(..., index={index}).y", y.tolist(), want_y.tolist(), where=random_batch)


def test_random_batch_depends_on_seed_and_index_only():
    shards = make_shards([500, 700])
    a = random_batch(shards, 8, 16, seed=3, index=5)[0]
    b = random_batch(shards, 8, 16, seed=3, index=5)[0]
    check_equal("random_batch(seed=3, index=5) twice", first_tokens(b), first_tokens(a), where=random_batch)
    c = random_batch(shards, 8, 16, seed=3, index=6)[0]
    assert first_tokens(c) != first_tokens(a), (
        "random_batch gives the same batch at every step (index 5 and 6 agree): seed the generator "
        "with [seed, index], not with seed alone")


def test_window_starts_small():
    got = window_starts(make_shards([10, 3, 7]), seq_len=3)
    check_equal("window_starts(shards of 10, 3, 7 tokens, seq_len=3)", got,
                [(0, 0), (0, 3), (0, 6), (2, 0), (2, 3)], where=window_starts,
                hint="offsets step by seq_len; a window needs seq_len + 1 tokens inside its own shard")


def test_one_rank_sees_every_window_once_per_epoch():
    shards = make_shards([97, 161, 65])
    loader = EpochLoader(shards, seq_len=8, global_batch=4, seed=1)
    n = len(window_starts(shards, 8))
    seen = []
    for step in range(loader.steps_per_epoch):
        seen += first_tokens(loader.batch(step)[0])
    expected = sorted(int(shards[s][off]) for s, off in window_starts(shards, 8))
    check_equal(f"windows seen in epoch 0 ({n} windows, {loader.steps_per_epoch} steps of 4)", sorted(seen),
                expected, where=EpochLoader.indices,
                hint="each window exactly once: take consecutive slices of one permutation per epoch")


def test_eight_ranks_together_are_one_rank():
    shards = make_shards([300, 257])
    one = EpochLoader(shards, seq_len=8, global_batch=16, seed=5)
    ranks = [EpochLoader(shards, seq_len=8, global_batch=16, seed=5, rank=r, world_size=8) for r in range(8)]
    for step in (0, 1, 2):
        parts = [first_tokens(r.batch(step)[0]) for r in ranks]
        joined = [t for p in parts for t in p]
        check_equal(f"step {step}: ranks 0..7 concatenated", joined, first_tokens(one.batch(step)[0]),
                    where=EpochLoader.indices,
                    hint="rank r takes rows r·local_batch .. (r+1)·local_batch of the global batch")


def test_resume_from_a_step():
    shards = make_shards([400])
    loader = EpochLoader(shards, seq_len=8, global_batch=4, seed=2)
    straight = loader.batches(0)
    expected = [first_tokens(next(straight)[1]) for _ in range(8)][5:]
    resumed = loader.batches(5)
    got = []
    for _ in range(3):
        step, x, _ = next(resumed)
        got.append(first_tokens(x))
    check_equal("EpochLoader.batches(5): the first three batches", got, expected, where=EpochLoader.batches,
                hint="resuming at step 5 must give batches 5, 6, 7 of an uninterrupted run")
