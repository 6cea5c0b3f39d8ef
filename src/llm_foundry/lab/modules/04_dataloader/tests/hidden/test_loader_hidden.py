"""Module 4 — the window loader (hidden tests: the same ideas, other shapes and corners)."""

import numpy as np

from llm_foundry.lab.testing import check_equal

from loader import EpochLoader, random_batch, window_starts


def make_shards(lengths):
    return [100000 * s + np.arange(n, dtype=np.int64) for s, n in enumerate(lengths)]


def first_tokens(x):
    return [int(t) for t in x[:, 0]]


def test_windows_stay_inside_their_shard():
    shards = make_shards([33, 8, 9, 17])
    for s, off in window_starts(shards, 8):
        assert off + 8 + 1 <= len(shards[s]), (
            f"window_starts gave ({s}, {off}), which runs past the end of shard {s} ({len(shards[s])} tokens): "
            f"a window needs seq_len + 1 = 9 tokens (x and the shifted y)")
    starts = window_starts(shards, 8)
    for (s1, o1), (s2, o2) in zip(starts, starts[1:]):
        if s1 == s2:
            assert o2 - o1 >= 8, f"windows ({s1}, {o1}) and ({s2}, {o2}) overlap: step the offset by seq_len"
    check_equal("window_starts(shards of 33, 8, 9, 17 tokens, seq_len=8)", starts,
                [(0, 0), (0, 8), (0, 16), (0, 24), (2, 0), (3, 0), (3, 8)], where=window_starts)


def test_random_batch_skips_short_shards_and_never_crosses_one():
    shards = make_shards([5, 60, 3, 45])
    for index in range(20):
        x, y = random_batch(shards, 4, 6, seed=11, index=index)
        full = np.concatenate([x.numpy(), y[:, -1:].numpy()], axis=1)
        for row in full:
            assert (np.diff(row) == 1).all(), (
                f"random_batch(index={index}) returned a window that is not {7} consecutive tokens of one "
                f"shard: {row.tolist()}")
            assert row[0] // 100000 in (1, 3), f"random_batch picked shard {row[0] // 100000}, shorter than a window"


def test_random_batch_picks_shards_in_proportion_to_their_windows():
    shards = make_shards([1010, 110])  # 1000 and 100 window starts for seq_len 10
    picks = [t // 100000 for i in range(60) for t in first_tokens(random_batch(shards, 10, 10, seed=0, index=i)[0])]
    share = picks.count(0) / len(picks)
    assert 0.82 < share < 0.97, (
        f"random_batch took {share:.0%} of its windows from the shard with 1000 of the 1100 window starts: "
        f"choose each shard with probability proportional to len(shard) - seq_len, not uniformly")


def test_eight_ranks_cover_the_epoch_exactly_once():
    shards = make_shards([257, 129, 385])
    n = len(window_starts(shards, 8))
    loaders = [EpochLoader(shards, seq_len=8, global_batch=8, seed=9, rank=r, world_size=8) for r in range(8)]
    seen = []
    for step in range(loaders[0].steps_per_epoch):
        for loader in loaders:
            seen += first_tokens(loader.batch(step)[0])
    dupes = sorted({t for t in seen if seen.count(t) > 1})
    assert not dupes, (f"8 ranks saw {len(dupes)} windows twice in one epoch (first tokens {dupes[:5]}): "
                       f"ranks must take disjoint slices of the step's global batch, and steps disjoint global batches")
    check_equal(f"windows seen by 8 ranks in epoch 0 ({n} windows)", len(seen), n, where=EpochLoader.indices)


def test_ranks_do_not_share_windows_within_a_step():
    shards = make_shards([600])
    loaders = [EpochLoader(shards, seq_len=4, global_batch=8, seed=0, rank=r, world_size=4) for r in range(4)]
    rows = [first_tokens(loader.batch(3)[0]) for loader in loaders]
    assert rows[0] != rows[1], (f"ranks 0 and 1 got the same windows at step 3 ({rows[0]}): "
                                f"each rank takes its own part of the global batch (use self.rank)")
    check_equal("EpochLoader(world_size=4).batch(3).x.shape", tuple(loaders[1].batch(3)[0].shape), (2, 4),
                where=EpochLoader.indices)


def test_uneven_tail_is_dropped_and_nothing_repeats():
    shards = make_shards([8 * 21 + 1])  # 21 windows, global batch 4: 5 steps, one window left over
    loader = EpochLoader(shards, seq_len=8, global_batch=4, seed=4)
    check_equal("EpochLoader(21 windows, global_batch=4).steps_per_epoch", loader.steps_per_epoch, 5)
    seen = [t for step in range(5) for t in first_tokens(loader.batch(step)[0])]
    check_equal("distinct windows in epoch 0", len(set(seen)), 20, where=EpochLoader.indices,
                hint="20 different windows: one permutation, consecutive slices")


def test_each_epoch_has_its_own_order_and_the_seed_fixes_it():
    shards = make_shards([8 * 64 + 1])
    loader = EpochLoader(shards, seq_len=8, global_batch=8, seed=3)
    e0, e1 = loader.order(0), loader.order(1)
    check_equal("sorted(order(1))", sorted(int(i) for i in e1), list(range(64)), where=EpochLoader.order,
                hint="an epoch's order is a permutation of all window indices")
    assert list(e0) != list(e1), ("EpochLoader.order gives the same order every epoch: seed the permutation with "
                                  "[seed, epoch] so each epoch is shuffled anew")
    again = EpochLoader(shards, seq_len=8, global_batch=8, seed=3).order(1)
    check_equal("order(1) of a second loader with the same seed", [int(i) for i in again], [int(i) for i in e1],
                where=EpochLoader.order)
    other = EpochLoader(shards, seq_len=8, global_batch=8, seed=4).order(1)
    assert list(other) != list(e1), "EpochLoader.order ignores the seed: seeds 3 and 4 give one order"


def test_steps_after_the_first_epoch_use_the_next_order():
    shards = make_shards([8 * 32 + 1])
    loader = EpochLoader(shards, seq_len=8, global_batch=8, seed=6)
    step = loader.steps_per_epoch + 1  # the second batch of epoch 1
    want = [int(i) for i in loader.order(1)[8:16]]
    check_equal(f"EpochLoader.indices({step}) with 4 steps per epoch", loader.indices(step), want,
                where=EpochLoader.indices, hint="epoch, within = divmod(step, steps_per_epoch)")


def test_resume_on_another_rank_far_into_training():
    shards = make_shards([1000, 500])
    loader = EpochLoader(shards, seq_len=16, global_batch=6, seed=8, rank=2, world_size=3)
    it = loader.batches(0)
    straight = [next(it) for _ in range(40)]
    resumed = loader.batches(37)
    for want in straight[37:]:
        step, x, y = next(resumed)
        check_equal("EpochLoader.batches(37): step", step, want[0], where=EpochLoader.batches)
        check_equal(f"EpochLoader.batches(37) at step {step}", first_tokens(x), first_tokens(want[1]),
                    where=EpochLoader.batches)
