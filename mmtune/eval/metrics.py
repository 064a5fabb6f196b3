"""Text metrics for evaluation: WER, CER, exact match, per-sample error counts.

Every metric compares references and hypotheses after a normalizer, by default
`normalize_text`, so "Three, one!" and "three one" count as the same transcript. WER and
CER are corpus-level: total edits over total reference words (or characters), not a mean
of per-sample rates, so long references weigh more than short ones.

    wer(refs, hyps)                                   # mmtune's normalizer
    wer(refs, hyps, normalize=normalizer("whisper_english"))

`normalizer(name)` gives one of NORMALIZERS (`eval.normalizer`):
    mmtune           normalize_text: NFKC, lowercase, punctuation out; words kept as written
    whisper_english  Whisper's English normalizer (transformers' EnglishTextNormalizer with the
                     openai-whisper spelling map shipped as whisper_english.json, MIT, (c) 2022
                     OpenAI): numbers as digits ("three one four" -> "314"), British -> American
                     spelling, fillers removed. The one published English Whisper WERs use.
    whisper_basic    Whisper's basic multilingual normalizer (BasicTextNormalizer): lowercase,
                     bracketed text and symbols out; the one published non-English WERs use.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import jiwer

from mmtune.config import NORMALIZERS

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


@functools.lru_cache(maxsize=None)
def normalizer(name: str = "mmtune") -> Callable[[str], str]:
    """The text normalizer named `name` (one of NORMALIZERS; see the module docstring)."""
    if name == "mmtune":
        return normalize_text
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if name == "whisper_english":
        spelling = json.loads((Path(__file__).parent / "whisper_english.json").read_text(encoding="utf-8"))
        english = EnglishTextNormalizer(spelling)
        return lambda text: _WHITESPACE.sub(" ", english(text)).strip()
    if name == "whisper_basic":
        basic = BasicTextNormalizer()
        return lambda text: _WHITESPACE.sub(" ", basic(text)).strip()
    raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)}, got {name!r}")


def _is_punctuation(c: str) -> bool:
    """True for Unicode punctuation other than the apostrophe (handled separately)."""
    return c != APOSTROPHE and unicodedata.category(c).startswith("P")


def wer(references: list[str], hypotheses: list[str], normalize: Callable[[str], str] = normalize_text) -> float:
    """Corpus word error rate: (S + D + I) / reference words, after `normalize`.

    An empty reference adds its hypothesis words as insertions. When the whole
    corpus has no reference word the denominator is taken as 1 (jiwer's convention),
    so the result is the insertion count: 0.0 for all-empty hypotheses.
    """
    return _error_rate(_corpus_counts(references, hypotheses, by_char=False, normalize=normalize))


def cer(references: list[str], hypotheses: list[str], normalize: Callable[[str], str] = normalize_text) -> float:
    """Corpus character error rate after `normalize`; spaces count as characters.

    Empty references are handled as in `wer`, with characters instead of words.
    """
    return _error_rate(_corpus_counts(references, hypotheses, by_char=True, normalize=normalize))


def exact_match(references: list[str], hypotheses: list[str],
                normalize: Callable[[str], str] = normalize_text) -> float:
    """Fraction of pairs equal after `normalize`; 0.0 for an empty corpus."""
    _check_pairs(references, hypotheses)
    if not references:
        return 0.0
    same = sum(normalize(r) == normalize(h) for r, h in zip(references, hypotheses))
    return same / len(references)


def error_counts(ref: str, hyp: str, normalize: Callable[[str], str] = normalize_text) -> dict[str, int]:
    """Word-level edit counts for one pair, after `normalize`.

    Returns ``{"substitutions": S, "deletions": D, "insertions": I, "hits": H}``;
    the reference has S + D + H words.
    """
    return _corpus_counts([ref], [hyp], by_char=False, normalize=normalize)


def _corpus_counts(references: list[str], hypotheses: list[str], by_char: bool,
                   normalize: Callable[[str], str] = normalize_text) -> dict[str, int]:
    """Sum S/D/I/H over all pairs, scoring pairs with an empty reference ourselves.

    jiwer 3 refuses empty references (ValueError), so those pairs never reach it:
    each of their hypothesis tokens is an insertion.
    """
    _check_pairs(references, hypotheses)
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
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
