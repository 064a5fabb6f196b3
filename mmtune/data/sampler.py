"""Batches of example indices by length: best-fit packing, token budgets, length grouping.

All functions are pure and deterministic given `seed`; every index appears exactly once.

    best_fit_pack([5, 3, 4, 2], max_tokens=7)           # [[0, 3], [2, 1]]
    token_budget_batches([5, 3, 4, 2], 8, padded=True, shuffle=False, seed=0)
    # [[3, 1], [2], [0]]: ascending lengths, (max length x batch size) <= 8
    length_grouped_batches([5, 3, 4, 2], batch_size=2, seed=0)  # longest batch first
"""

import bisect
import random


def best_fit_pack(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Best-fit decreasing: longest first, each into the fullest group it still fits.

    Groups are in order of creation (the first holds the longest example); each total <= max_tokens.
        best_fit_pack([5, 3, 4, 2], 7)  # [[0, 3], [2, 1]]
    """
    check_lengths(lengths, max_tokens)
    groups: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, group index), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
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

    packed (padded=False): best-fit groups, each total <= max_tokens.
    padded: similar lengths together, (longest in batch x batch size) <= max_tokens; with
    shuffle, equal lengths are ordered by the seed.
    shuffle then shuffles the order of the batches with `seed`.
        token_budget_batches([5, 3, 4, 2], 8, padded=True, shuffle=False, seed=0)  # [[3, 1], [2], [0]]
    """
    batches = _padded_batches(lengths, max_tokens, shuffle, seed) if padded else best_fit_pack(lengths, max_tokens)
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


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, mega_batch_mult: int = 50
) -> list[list[int]]:
    """As HF's LengthGroupedSampler: shuffle, sort by length (longest first) inside mega-batches of
    mega_batch_mult x batch_size, cut into batches; the batch with the longest example goes first
    (an out-of-memory shows at step one).
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
    if batches:
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


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
