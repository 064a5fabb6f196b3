"""Chat encoding: a conversation -> (input_ids, labels) with placeholders expanded.

    ids, labels = render_conversation(tokenizer, messages, counts)

The tokenizer's own chat template renders the text (media parts become `<|audio|>` /
`<|image|>`); each assistant turn is found as the text its template adds after the generation
prompt. Trained tokens: the assistant text plus its end-of-turn token, of every assistant turn
(`train_on="all"`) or of the last one (`"last"`). Each placeholder then becomes exactly the
number of tokens its encoder gives (`mmtune.model.placeholders`).
"""

import torch

from mmtune.data.example import IGNORE_INDEX
from mmtune.errors import DataError
from mmtune.model.placeholders import PLACEHOLDERS

# end-of-turn tokens of common templates; the tokenizer's eos is always one
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def text_messages(messages: list[dict]) -> list[dict]:
    """Content parts -> one string per message, media as placeholder tokens (one part per line)."""
    out = []
    for m in messages:
        pieces = [p["text"] if p["type"] == "text" else PLACEHOLDERS[p["type"]] for p in m["content"]]
        out.append({"role": m["role"], "content": "\n".join(pieces)})
    return out


def end_of_turn_ids(tokenizer) -> set[int]:
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _template(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_segments(tokenizer, messages: list[dict], train_on: str = "all") -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_answer) pieces, in order."""
    chat = text_messages(messages)
    answers = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
    trained = set(answers if train_on == "all" else answers[-1:])
    segments, done = [], ""
    for i in answers:
        prompt = _template(tokenizer, chat[:i], generation_prompt=True)
        full = _template(tokenizer, chat[: i + 1], generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError("", "the chat template does not render turns as a growing prefix, so mmtune cannot "
                                "find the assistant tokens; set model.llm.chat_template to one that does")
        segments += [(prompt[len(done):], False), (full[len(prompt):], i in trained)]
        done = full
    rest = _template(tokenizer, chat, generation_prompt=False)[len(done):]
    return [s for s in segments + [(rest, False)] if s[0]]


def _answer_labels(ids: list[int], eot: set[int]) -> list[int]:
    """Supervise the answer up to and including its last end-of-turn token (not the newline after)."""
    ends = [k for k, t in enumerate(ids) if t in eot]
    stop = ends[-1] + 1 if ends else len(ids)
    return ids[:stop] + [IGNORE_INDEX] * (len(ids) - stop)


def render_conversation(tokenizer, messages: list[dict], counts: dict[str, list[int]],
                        train_on: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (T,), labels (T,); counts["audio"][k] is the token count of the k-th clip."""
    eot = end_of_turn_ids(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in chat_segments(tokenizer, messages, train_on):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += _answer_labels(piece, eot) if trained else [IGNORE_INDEX] * len(piece)
    ids, labels = expand_placeholders(tokenizer, ids, labels, counts)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def render_prompt(tokenizer, messages: list[dict], counts: dict[str, list[int]]) -> torch.Tensor:
    """A generation prompt: the conversation up to (not including) its last assistant turn, if any,
    then the template's generation prompt -> input_ids (T,), placeholders expanded."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    text = _template(tokenizer, text_messages(messages), generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids, _ = expand_placeholders(tokenizer, ids, ids, counts)
    return torch.tensor(ids, dtype=torch.long)


def expand_placeholders(tokenizer, ids, labels, counts: dict[str, list[int]]):
    """Repeat the k-th placeholder of each modality counts[modality][k] times (never supervised)."""
    token_ids = {tokenizer.convert_tokens_to_ids(tok): modality for modality, tok in PLACEHOLDERS.items()}
    seen = {modality: 0 for modality in PLACEHOLDERS}
    out_ids, out_labels = [], []
    for t, label in zip(ids, labels):
        modality = token_ids.get(t)
        if modality is None:
            out_ids.append(t)
            out_labels.append(label)
            continue
        k = seen[modality]
        if k >= len(counts.get(modality, [])):
            raise DataError("", f"the rendered text has more {modality} placeholders than {modality} inputs; "
                                f"does the chat template or the text repeat {PLACEHOLDERS[modality]}?")
        out_ids += [t] * counts[modality][k]
        out_labels += [IGNORE_INDEX] * counts[modality][k]
        seen[modality] += 1
    for modality, n in seen.items():
        if n != len(counts.get(modality, [])):
            raise DataError("", f"the rendered text has {n} {modality} placeholders for "
                                f"{len(counts.get(modality, []))} {modality} inputs; the chat template dropped some")
    return out_ids, out_labels


def truncate(ids: torch.Tensor, labels: torch.Tensor, max_length: int, placeholder_ids: set[int]):
    """Cut the text at max_length, moving the cut back to the start of a placeholder run it would split.

    -> (ids, labels, runs) with runs[token_id] = placeholder runs kept (the media lists are cut to
    match), or None when no supervised token is left.
    """
    cut = max_length
    if cut < len(ids) and int(ids[cut]) in placeholder_ids:
        while cut > 0 and int(ids[cut - 1]) == int(ids[cut]):
            cut -= 1  # inside a run: keep none of it
    ids, labels = ids[:cut], labels[:cut]
    if not bool((labels != IGNORE_INDEX).any()):
        return None
    previous = torch.cat([ids.new_full((1,), -1), ids[:-1]])
    runs = {pid: int(((ids == pid) & (previous != pid)).sum()) for pid in placeholder_ids}
    return ids, labels, runs
