"""Text metrics for evaluation: WER, CER, exact match, per-sample error counts.

Every metric compares references and hypotheses after `normalize_text`, so
"Three, one!" and "three one" count as the same transcript. WER and CER are
corpus-level: total edits over total reference words (or characters), not a mean
of per-sample rates, so long references weigh more than short ones.
"""

from __future__ import annotations

import re
import unicodedata

import jiwer

APOSTROPHE = "'"
TYPOGRAPHIC_APOSTROPHES = "\u2019\u02bc"  # right single quotation mark, modifier apostrophe
_LONE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
_WHITESPACE = re.compile(r"\s+")
COUNT_KEYS = ("substitutions", "deletions", "insertions", "hits")


def normalize_text(s: str) -> str:
    """Return the canonical form of a transcript, used by every metric here.

    Steps, in order:

    1. Unicode NFKC (full-width letters, ligatures and compatibility forms become
       their plain equivalents).
    2. Lowercase.
    3. Typographic apostrophes (U+2019, U+02BC) become ASCII "'".
    4. Punctuation (every Unicode category P* character) becomes a space, except an
       apostrophe between two word characters ("don't" stays "don't"; "'quoted'"
       becomes "quoted"). Symbols such as "$" or "%" are kept.
    5. Runs of whitespace collapse to one space; leading and trailing space is removed.

    Example: ``normalize_text("  Three, ONE!  four-five ")`` -> ``"three one four five"``.
    """
    s = unicodedata.normalize("NFKC", s).lower()
    for mark in TYPOGRAPHIC_APOSTROPHES:
        s = s.replace(mark, APOSTROPHE)
    s = "".join(" " if _is_punctuation(c) else c for c in s)
    s = _LONE_APOSTROPHE.sub(" ", s)
    return _WHITESPACE.sub(" ", s).strip()


def _is_punctuation(c: str) -> bool:
    """True for Unicode punctuation other than the apostrophe (handled separately)."""
    return c != APOSTROPHE and unicodedata.category(c).startswith("P")


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: (S + D + I) / reference words, after normalize_text.

    An empty reference adds its hypothesis words as insertions. When the whole
    corpus has no reference word the denominator is taken as 1 (jiwer's convention),
    so the result is the insertion count: 0.0 for all-empty hypotheses.
    """
    return _error_rate(_corpus_counts(references, hypotheses, by_char=False))


def cer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus character error rate after normalize_text; spaces count as characters.

    Empty references are handled as in `wer`, with characters instead of words.
    """
    return _error_rate(_corpus_counts(references, hypotheses, by_char=True))


def exact_match(references: list[str], hypotheses: list[str]) -> float:
    """Fraction of pairs equal after normalize_text; 0.0 for an empty corpus."""
    _check_pairs(references, hypotheses)
    if not references:
        return 0.0
    same = sum(normalize_text(r) == normalize_text(h) for r, h in zip(references, hypotheses))
    return same / len(references)


def error_counts(ref: str, hyp: str) -> dict[str, int]:
    """Word-level edit counts for one pair, after normalize_text.

    Returns ``{"substitutions": S, "deletions": D, "insertions": I, "hits": H}``;
    the reference has S + D + H words.
    """
    return _corpus_counts([ref], [hyp], by_char=False)


def _corpus_counts(references: list[str], hypotheses: list[str], by_char: bool) -> dict[str, int]:
    """Sum S/D/I/H over all pairs, scoring pairs with an empty reference ourselves.

    jiwer 3 refuses empty references (ValueError), so those pairs never reach it:
    each of their hypothesis tokens is an insertion.
    """
    _check_pairs(references, hypotheses)
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    counts = dict.fromkeys(COUNT_KEYS, 0)
    scored = [(r, h) for r, h in zip(refs, hyps) if r]
    counts["insertions"] = sum(_n_tokens(h, by_char) for r, h in zip(refs, hyps) if not r)
    if scored:
        process = jiwer.process_characters if by_char else jiwer.process_words
        out = process([r for r, _ in scored], [h for _, h in scored])
        for key in COUNT_KEYS:
            counts[key] += getattr(out, key)
    return counts


def _n_tokens(text: str, by_char: bool) -> int:
    """Number of characters (by_char) or words in an already normalized string."""
    return len(text) if by_char else len(text.split())


def _error_rate(counts: dict[str, int]) -> float:
    """(S + D + I) / max(1, S + D + H)."""
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    n_ref = counts["substitutions"] + counts["deletions"] + counts["hits"]
    return errors / max(1, n_ref)


def _check_pairs(references: list[str], hypotheses: list[str]) -> None:
    """Fail loudly when references and hypotheses cannot be paired."""
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references and hypotheses must be lists of strings, not a string")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"got {len(references)} references but {len(hypotheses)} hypotheses; "
            "pass one hypothesis per reference"
        )
