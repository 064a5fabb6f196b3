"""Batches of example indices by length: best-fit packing, token budgets, length grouping.

All functions are pure and deterministic given `seed`; every index appears exactly once.

    best_fit_pack([5, 3, 4, 2], max_tokens=7)           # [[0, 3], [2, 1]]
    best_fit_pack([5, 3, 4, 2], max_tokens=7, seed=0)   # shuffled order: mixed lengths in a group
    token_budget_batches([5, 3, 4, 2], 8, padded=True, shuffle=False, seed=0)
    # [[3, 1], [2], [0]]: ascending lengths, (max length x batch size) <= 8
    length_grouped_batches([5, 3, 4, 2], batch_size=2, seed=0)  # longest batch first

Training draws mixed batches on purpose. When length tells the task (a spoken question is
longer than a typed one), batches of similar lengths are batches of one task, and a run that
steps through them in length order learns one task at a time and stalls (measured on the vision
example: 0.09 against 0.83 accuracy after 600 steps). So packing takes examples in shuffled
order, and length-grouped batches are shuffled after the first.
"""

import bisect
import random


def best_fit_pack(lengths: list[int], max_tokens: int, seed: int | None = None) -> list[list[int]]:
    """Each example into the fullest group it still fits; each group's total <= max_tokens.

    seed None: best-fit decreasing (longest first), the tightest packing, but a group then holds
    examples of similar lengths. With a seed: examples in a shuffled order, so a group holds a
    random mix; on the bench mix and the omni example this fills rows within 1% of decreasing
    order (0.981 vs 0.981, 0.970 vs 0.981) while the share of a row's most common task drops
    from 0.74 to 0.40 (omni; 0.23 is the data's own).
    Groups are in order of creation.
        best_fit_pack([5, 3, 4, 2], 7)  # [[0, 3], [2, 1]]
    """
    check_lengths(lengths, max_tokens)
    if seed is None:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    else:
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
    groups: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, group index), sorted
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))  # the smallest free room that fits
        if k == len(free):
            groups.append([])
            room, g = max_tokens, len(groups) - 1
        else:
            room, g = free.pop(k)
        groups[g].append(i)
        bisect.insort(free, (room - lengths[i], g))
    return groups


def token_budget_batches(
    lengths: list[int], max_tokens: int, padded: bool, shuffle: bool, seed: int
) -> list[list[int]]:
    """Batches that fit a token budget.

    packed (padded=False): best-fit groups, each total <= max_tokens; with shuffle, the examples
    are packed in a shuffled order (mixed groups, different ones for each seed).
    padded: similar lengths together, (longest in batch x batch size) <= max_tokens; with
    shuffle, equal lengths are ordered by the seed.
    shuffle then shuffles the order of the batches with `seed`.
        token_budget_batches([5, 3, 4, 2], 8, padded=True, shuffle=False, seed=0)  # [[3, 1], [2], [0]]
    """
    if padded:
        batches = _padded_batches(lengths, max_tokens, shuffle, seed)
    else:
        batches = best_fit_pack(lengths, max_tokens, seed + 1 if shuffle else None)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


def _padded_batches(lengths: list[int], max_tokens: int, shuffle: bool, seed: int) -> list[list[int]]:
    check_lengths(lengths, max_tokens)
    order = list(range(len(lengths)))
    if shuffle:
        random.Random(seed + 1).shuffle(order)
    order.sort(key=lambda i: lengths[i])  # stable: ties keep the shuffled order
    batches: list[list[int]] = []
    for i in order:  # ascending, so lengths[i] is the longest of its batch
        if not batches or lengths[i] * (len(batches[-1]) + 1) > max_tokens:
            batches.append([])
        batches[-1].append(i)
    return batches


def shuffled_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Fixed-size batches of a shuffled order, as a stock data loader makes them.
        shuffled_batches(5, 2, seed=0)  # [[2, 1], [0, 4], [3]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[k : k + batch_size] for k in range(0, n, batch_size)]


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, mega_batch_mult: int = 50
) -> list[list[int]]:
    """As HF's LengthGroupedSampler: shuffle, sort by length (longest first) inside mega-batches of
    mega_batch_mult x batch_size, cut into batches; the batch with the longest example goes first
    (an out-of-memory shows at step one), the others follow in a shuffled order (HF keeps them
    sorted, so consecutive steps see similar lengths: often one task).
        length_grouped_batches([5, 3, 4, 2], 2, seed=0)  # e.g. [[0, 2], [1, 3]]
    """
    if batch_size < 1 or mega_batch_mult < 1:
        raise ValueError(f"batch_size and mega_batch_mult must be >= 1, got {batch_size} and {mega_batch_mult}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    mega = mega_batch_mult * batch_size
    batches = []
    for start in range(0, len(order), mega):
        block = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [block[k : k + batch_size] for k in range(0, len(block), batch_size)]
    if not batches:
        return batches
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
    first = batches.pop(longest)
    random.Random(seed + 1).shuffle(batches)
    return [first] + batches


def padding_stats(batches: list[list[int]], lengths: list[int], max_tokens: int | None = None) -> dict:
    """How much of the computed tokens are real.

    Without max_tokens the batches are padded: slots = sum(longest x count) per batch.
    With max_tokens the batches are packed rows of that size: slots = max_tokens per batch.
        padding_stats([[0, 1]], [3, 1])  # real_token_fraction 4 / 6
    """
    real = sum(lengths[i] for b in batches for i in b)
    if max_tokens is None:
        slots = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    else:
        slots = max_tokens * len(batches)
    return {
        "num_batches": len(batches),
        "num_examples": sum(len(b) for b in batches),
        "real_tokens": real,
        "slot_tokens": slots,
        "real_token_fraction": real / slots if slots else 1.0,
    }


def check_lengths(lengths: list[int], max_tokens: int) -> None:
    """Raise ValueError naming the first example longer than max_tokens."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(f"example {i} has {n} tokens, more than max_tokens={max_tokens}; "
                             f"drop or truncate it in the data step, or raise max_tokens")
