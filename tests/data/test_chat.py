"""Chat encoding with the tiny ChatML tokenizer: assistant-only labels, placeholder expansion to
exact counts, truncation that never splits a placeholder run."""

import pytest
import torch

from mmtune.data.chat import (chat_segments, expand_placeholders, render_conversation, render_prompt,
                                truncate)
from mmtune.data.example import IGNORE_INDEX
from mmtune.errors import DataError
from mmtune.model.tokenizer import load_tokenizer

I = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def message(role, *parts):
    """message("user", "text", ("audio", "a.wav")) -> {"role": ..., "content": [part, ...]}."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": p[0], "path": p[1]} for p in parts]
    return {"role": role, "content": content}


TWO_TURNS = [message("system", "Be brief."),
             message("user", ("audio", "a.wav"), "Transcribe the audio."),
             message("assistant", "three one four"),
             message("user", "Which digit is written here?"),
             message("assistant", "zero seven eight")]


def supervised_runs(labels: torch.Tensor) -> list[list[int]]:
    """The supervised label ids, one list per contiguous run."""
    out, previous = [], False
    for label in labels.tolist():
        if label != I:
            if not previous:
                out.append([])
            out[-1].append(label)
        previous = label != I
    return out


@pytest.mark.parametrize("train_on, answers", [("all", ["three one four", "zero seven eight"]),
                                               ("last", ["zero seven eight"])])
def test_supervised_ids_are_exactly_the_answers_and_their_end_of_turn(tokenizer, train_on, answers):
    ids, labels = render_conversation(tokenizer, TWO_TURNS, {"audio": [3], "image": []}, train_on)
    expected = [ids_of(tokenizer, a + "<|im_end|>") for a in answers]
    assert expected[-1] == tokenizer("zero seven eight<|im_end|>")["input_ids"]  # the tiny tokenizer adds nothing
    assert supervised_runs(labels) == expected
    supervised = labels != I
    assert torch.equal(labels[supervised], ids[supervised])  # labels[t] is the token at t
    # every run starts right after the assistant header and stops before the newline after <|im_end|>
    header = ids_of(tokenizer, "<|im_start|>assistant\n")
    starts = [t for t in range(1, len(ids)) if supervised[t] and not supervised[t - 1]]
    for t in starts:
        assert ids[t - len(header) : t].tolist() == header
    assert ids[-1].tolist() == ids_of(tokenizer, "\n")[0] and labels[-1] == I
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape


def test_the_text_is_the_tokenizers_own_template(tokenizer):
    ids, _ = render_conversation(tokenizer, TWO_TURNS, {"audio": [1], "image": []})
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<|audio|>\nTranscribe the audio."},
            {"role": "assistant", "content": "three one four"},
            {"role": "user", "content": "Which digit is written here?"},
            {"role": "assistant", "content": "zero seven eight"}]
    assert ids.tolist() == ids_of(tokenizer, tokenizer.apply_chat_template(chat, tokenize=False))


def test_segments_mark_only_assistant_answers(tokenizer):
    segments = chat_segments(tokenizer, TWO_TURNS, "last")
    assert [text for text, trained in segments if trained] == ["zero seven eight<|im_end|>"]
    assert "".join(text for text, _ in segments) == tokenizer.apply_chat_template(
        [{"role": m["role"], "content": "\n".join(p.get("text", "<|audio|>") for p in m["content"])}
         for m in TWO_TURNS], tokenize=False)


def test_each_placeholder_becomes_exactly_its_count_in_order(tokenizer):
    messages = [message("user", ("image", "x.png"), ("audio", "a.wav"), ("image", "y.png"), "What is in the image?"),
                message("assistant", "A red circle.")]
    audio_id, image_id = (tokenizer.convert_tokens_to_ids(t) for t in ("<|audio|>", "<|image|>"))
    one_each, one_labels = render_conversation(tokenizer, messages, {"audio": [1], "image": [1, 1]})
    ids, labels = render_conversation(tokenizer, messages, {"audio": [7], "image": [4, 5]})
    assert len(ids) == len(one_each) + (7 - 1) + (4 - 1) + (5 - 1)
    kinds = [(t, n) for t, n in _runs(ids.tolist()) if t in (audio_id, image_id)]
    assert kinds == [(image_id, 4), (audio_id, 7), (image_id, 5)]
    media = (ids == audio_id) | (ids == image_id)
    assert (labels[media] == I).all()
    assert ids[~media].tolist() == one_each[(one_each != audio_id) & (one_each != image_id)].tolist()
    assert labels[~media].tolist() == one_labels[(one_each != audio_id) & (one_each != image_id)].tolist()


def _runs(ids):
    out = []
    for t in ids:
        if out and out[-1][0] == t:
            out[-1][1] += 1
        else:
            out.append([t, 1])
    return [tuple(r) for r in out]


def test_placeholder_count_mismatches_are_errors(tokenizer):
    ids = ids_of(tokenizer, "a <|image|> b")
    with pytest.raises(DataError, match="the rendered text has 1 image placeholders for 2 image inputs"):
        expand_placeholders(tokenizer, ids, ids, {"image": [16, 16]})
    with pytest.raises(DataError, match="the rendered text has more audio placeholders than audio inputs"):
        expand_placeholders(tokenizer, ids_of(tokenizer, "<|audio|><|audio|>"), [I, I], {"audio": [3]})


def test_a_template_that_renders_turns_out_of_order_is_refused(tokenizer_dir):
    reversed_chat = ("{% for m in messages|reverse %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                     "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = load_tokenizer(tokenizer_dir, chat_template=reversed_chat)
    with pytest.raises(DataError, match="renders the assistant turns out of order"):
        render_conversation(tokenizer, TWO_TURNS, {"audio": [1], "image": []})


def test_prompt_stops_at_the_generation_prompt(tokenizer):
    ids = render_prompt(tokenizer, TWO_TURNS, {"audio": [3], "image": []})
    full, labels = render_conversation(tokenizer, TWO_TURNS, {"audio": [3], "image": []})
    last_answer = supervised_runs(labels)[-1]
    assert ids.tolist() == full[: len(full) - len(last_answer) - 1].tolist()  # -1: the newline after <|im_end|>
    header = ids_of(tokenizer, "<|im_start|>assistant\n")
    assert ids[-len(header):].tolist() == header


# ----------------------------------------------------------------------------- truncate


P, Q = 90, 91  # placeholder ids of two modalities


def _cut(ids, labels, max_length):
    return truncate(torch.tensor(ids), torch.tensor(labels), max_length, {P, Q})


@pytest.mark.parametrize("max_length, kept, runs", [
    (9, 9, {P: 1, Q: 1}),  # the cut falls after both runs
    (8, 8, {P: 1, Q: 1}),  # right after Q's run (positions 6-7)
    (7, 6, {P: 1, Q: 0}),  # inside Q's run: back to its start
    (6, 6, {P: 1, Q: 0}),  # right at Q's start: nothing of it kept
    (5, 5, {P: 1, Q: 0}),
    (3, 2, {P: 0, Q: 0}),  # inside P's run
])
def test_truncate_never_splits_a_placeholder_run(max_length, kept, runs):
    ids = [1, 2, P, P, P, 5, Q, Q, 8, 9]
    labels = [I, 2, I, I, I, 5, I, I, 8, 9]
    out_ids, out_labels, out_runs = _cut(ids, labels, max_length)
    assert out_ids.tolist() == ids[:kept] and out_labels.tolist() == labels[:kept]
    assert out_runs == runs


def test_truncate_inside_the_first_run_and_without_supervised_token_left():
    ids = [1, P, P, P, 5, 6]
    assert _cut(ids, [1, I, I, I, 5, 6], 3)[0].tolist() == [1]
    assert _cut(ids, [I, I, I, I, 5, 6], 3) is None  # only the masked prefix is left
    assert _cut(ids, [I, I, I, I, 5, 6], 5)[0].tolist() == [1, P, P, P, 5]
