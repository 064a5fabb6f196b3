import random
from collections import Counter

import pytest

from mmtune.data.sampler import (
    best_fit_pack,
    check_lengths,
    length_grouped_batches,
    padding_stats,
    shuffled_batches,
    token_budget_batches,
)


def lognormal_lengths(n=2000, seed=0, median=200, cap=None):
    rng = random.Random(seed)
    lengths = [max(1, int(rng.lognormvariate(0, 0.6) * median)) for _ in range(n)]
    return [min(length, cap) for length in lengths] if cap else lengths


def assert_each_index_once(batches, n):
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(n))
    assert all(batches)


def test_best_fit_pack_small_example():
    assert best_fit_pack([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    assert best_fit_pack([], 7) == []


def test_best_fit_pack_fills_well_on_lognormal_lengths():
    max_tokens = 8 * 200  # 8x the median
    lengths = lognormal_lengths(cap=max_tokens)
    groups = best_fit_pack(lengths, max_tokens)
    assert_each_index_once(groups, len(lengths))
    assert all(sum(lengths[i] for i in g) <= max_tokens for g in groups)
    assert padding_stats(groups, lengths, max_tokens=max_tokens)["real_token_fraction"] >= 0.95


def test_too_long_example_names_index_and_length():
    with pytest.raises(ValueError, match="example 2 has 9 tokens, more than max_tokens=8; drop or truncate"):
        best_fit_pack([1, 2, 9], 8)
    with pytest.raises(ValueError, match="example 0 has 9 tokens"):
        token_budget_batches([9], 8, padded=True, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        check_lengths([1], 0)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_token_budget_batches_cover_respect_budget_and_are_deterministic(padded, shuffle):
    lengths = lognormal_lengths(n=1000, seed=1)
    max_tokens = 4096
    batches = token_budget_batches(lengths, max_tokens, padded=padded, shuffle=shuffle, seed=3)
    assert_each_index_once(batches, len(lengths))
    for b in batches:
        cost = max(lengths[i] for i in b) * len(b) if padded else sum(lengths[i] for i in b)
        assert cost <= max_tokens
    assert batches == token_budget_batches(lengths, max_tokens, padded=padded, shuffle=shuffle, seed=3)
    if shuffle:
        assert batches != token_budget_batches(lengths, max_tokens, padded=padded, shuffle=shuffle, seed=4)


def test_padded_token_budget_groups_similar_lengths():
    assert token_budget_batches([5, 3, 4, 2], 8, padded=True, shuffle=False, seed=0) == [[3, 1], [2], [0]]
    lengths = lognormal_lengths(n=1000, seed=2)
    batches = token_budget_batches(lengths, 4096, padded=True, shuffle=True, seed=0)
    assert padding_stats(batches, lengths)["real_token_fraction"] >= 0.9


def test_length_grouped_batches():
    lengths = lognormal_lengths(n=1003, seed=5)
    batches = length_grouped_batches(lengths, batch_size=8, seed=0, mega_batch_mult=10)
    assert_each_index_once(batches, len(lengths))
    assert sorted(len(b) for b in batches)[:2] == [1003 % 8, 8]  # only the last mega-batch's tail is short
    assert lengths[batches[0][0]] == max(lengths)  # the longest batch first
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=0, mega_batch_mult=10)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=1, mega_batch_mult=10)
    grouped = padding_stats(batches, lengths)["real_token_fraction"]
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    plain = padding_stats([order[k : k + 8] for k in range(0, len(order), 8)], lengths)["real_token_fraction"]
    assert grouped > plain + 0.2


def test_padding_stats_values():
    stats = padding_stats([[0, 1], [2]], [3, 1, 4])
    assert stats == {"num_batches": 2, "num_examples": 3, "real_tokens": 8, "slot_tokens": 10, "real_token_fraction": 0.8}
    assert padding_stats([[0, 1], [2]], [3, 1, 4], max_tokens=5)["real_token_fraction"] == 0.8
    assert padding_stats([], [])["real_token_fraction"] == 1.0


def two_task_lengths(n=800, seed=0):
    """Half 'short-task' examples (40-60 tokens), half 'long-task' ones (90-110): length tells the task."""
    rng = random.Random(seed)
    tasks = [rng.choice("SL") for _ in range(n)]
    return [rng.randint(40, 60) if t == "S" else rng.randint(90, 110) for t in tasks], tasks


def test_shuffled_best_fit_mixes_tasks_and_still_fills_rows():
    lengths, tasks = two_task_lengths()
    max_tokens = 640
    mixed = best_fit_pack(lengths, max_tokens, seed=0)
    assert_each_index_once(mixed, len(lengths))
    assert all(sum(lengths[i] for i in g) <= max_tokens for g in mixed)
    fill = lambda groups: padding_stats(groups, lengths, max_tokens)["real_token_fraction"]
    assert fill(mixed) >= fill(best_fit_pack(lengths, max_tokens)) - 0.02
    def dominant(groups):  # mean share of a row's most common task; 0.5 for a perfect mix
        return sum(max(Counter(tasks[i] for i in g).values()) / len(g) for g in groups) / len(groups)
    assert dominant(best_fit_pack(lengths, max_tokens)) >= 0.9  # decreasing order: rows of one task
    assert dominant(mixed) <= 0.7
    assert mixed == best_fit_pack(lengths, max_tokens, seed=0)
    assert mixed != best_fit_pack(lengths, max_tokens, seed=1)


def test_packed_token_budget_batches_differ_per_epoch_seed():
    lengths, _ = two_task_lengths()
    a = token_budget_batches(lengths, 640, padded=False, shuffle=True, seed=0)
    b = token_budget_batches(lengths, 640, padded=False, shuffle=True, seed=1)
    assert {frozenset(g) for g in a} != {frozenset(g) for g in b}  # new groups, not only a new order


def test_length_grouped_batches_come_in_shuffled_order():
    """Sorted batch order would step through all long-task batches, then all short-task ones."""
    lengths, tasks = two_task_lengths()
    batches = length_grouped_batches(lengths, batch_size=8, seed=0, mega_batch_mult=100)  # one mega-batch
    assert_each_index_once(batches, len(lengths))
    kind = [tasks[b[0]] for b in batches]
    switches = sum(a != b for a, b in zip(kind, kind[1:]))
    assert switches >= len(batches) // 4  # a random order switches about half the time; sorted once
    assert sum(len({tasks[i] for i in b}) > 1 for b in batches) <= 1  # batches still of similar lengths


def test_shuffled_batches():
    assert shuffled_batches(5, 2, seed=0) == [[2, 1], [0, 4], [3]]
    assert_each_index_once(shuffled_batches(101, 8, seed=3), 101)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        shuffled_batches(5, 0, seed=0)
