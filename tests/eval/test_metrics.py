"""Metrics on hand-made strings whose edit counts are worked out by hand."""

import pytest

from mmtune.eval.metrics import cer, error_counts, exact_match, normalize_text, wer


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Three, one!", "three one"),
        ("  Three,  ONE!\tfour-five\n", "three one four five"),
        ("Don't stop", "don't stop"),
        ("'quoted' words'", "quoted words"),
        ("it\u2019s", "it's"),
        ("\uff34\uff37\uff2f", "two"),  # full-width TWO -> NFKC -> lowercase
        ("...", ""),
        ("", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_wer_one_substitution():
    assert wer(["three one four"], ["three one five"]) == pytest.approx(1 / 3)


def test_wer_deletion():
    # "one" deleted: 1 edit over 3 reference words
    assert wer(["three one four"], ["three four"]) == pytest.approx(1 / 3)
    assert error_counts("three one four", "three four") == {
        "substitutions": 0, "deletions": 1, "insertions": 0, "hits": 2,
    }


def test_wer_insertion():
    # "nine" inserted: 1 edit over 2 reference words
    assert wer(["three one"], ["three nine one"]) == pytest.approx(1 / 2)
    assert error_counts("three one", "three nine one") == {
        "substitutions": 0, "deletions": 0, "insertions": 1, "hits": 2,
    }


def test_wer_is_corpus_level():
    # 1 substitution in 4 words + 1 substitution in 1 word = 2 / 5,
    # not the mean of per-sample rates (1/4 + 1) / 2 = 0.625.
    refs = ["one two three four", "five"]
    hyps = ["one two three nine", "six"]
    assert wer(refs, hyps) == pytest.approx(2 / 5)


def test_wer_normalizes_punctuation_and_case():
    assert wer(["Three, one!"], ["three one"]) == 0.0
    assert cer(["Three, one!"], ["three one"]) == 0.0


def test_wer_empty_hypothesis_is_all_deletions():
    assert wer(["three one four"], [""]) == 1.0
    assert error_counts("three one four", "")["deletions"] == 3


def test_empty_reference_counts_insertions():
    # second pair has no reference word: its 2 words are insertions; 2 / 3 in all
    assert wer(["three one four", "!"], ["three one four", "five six"]) == pytest.approx(2 / 3)
    assert error_counts("", "five six") == {
        "substitutions": 0, "deletions": 0, "insertions": 2, "hits": 0,
    }
    assert wer([""], [""]) == 0.0
    assert wer([""], ["five six"]) == 2.0  # no reference word: denominator is 1


def test_cer():
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    # "ab c" vs "abc": the space is a reference character, deleted -> 1 / 4
    assert cer(["ab c"], ["abc"]) == pytest.approx(1 / 4)
    # empty reference: 3 hypothesis characters are insertions, over 3 + 3 reference chars
    assert cer(["abc", ""], ["abc", "xyz"]) == pytest.approx(3 / 3)


def test_exact_match():
    refs = ["three one", "four", "Five!"]
    hyps = ["Three, one.", "four five", "five"]
    assert exact_match(refs, hyps) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0


def test_mismatched_lengths_fail_loudly():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        wer("three one", "three one")


def test_whisper_normalizers_as_published_whisper_wers_use_them():
    from mmtune.eval.metrics import normalizer

    english, basic = normalizer("whisper_english"), normalizer("whisper_basic")
    assert english("Three one four, colour!") == "314 color"  # numbers as digits, American spelling
    assert basic("Three one four, Colour!") == "three one four colour"
    # words against digits: one word (314) each side after the English normalizer, three before
    assert wer(["three one four"], ["3 1 4"]) == 1.0
    assert wer(["three one four"], ["314"], normalize=english) == 0.0
    assert normalizer("mmtune") is normalize_text
    with pytest.raises(ValueError, match="normalizer must be one of"):
        normalizer("none")
