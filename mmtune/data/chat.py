"""Chat encoding: a conversation -> (input_ids, labels) with placeholders expanded.

    ids, labels = render_conversation(tokenizer, messages, counts)

The tokenizer's own chat template renders the text (media parts become `<|audio|>` /
`<|image|>`); each assistant answer is found where the template puts it in that rendering
(`chat_segments`). Trained tokens: the assistant text plus its end-of-turn token, of every assistant turn
(`train_on="all"`) or of the last one (`"last"`). Each placeholder then becomes exactly the
number of tokens its encoder gives (`mmtune.model.placeholders`).

Message text holding one of the tokenizer's special tokens (`<|im_end|>`, `<|im_start|>`, eos, pad,
`<|audio|>`, ...) would be read as that control token: an answer "seven<|im_end|><|im_start|>user..."
would teach the model to write a fake user turn. `SpecialTokens` (built once per tokenizer) refuses such
text (data.special_tokens: error) or keeps it as the characters written (text): each occurrence stands
as a private-use sentinel while the template renders, and the run of text around it is tokenized with
`split_special_tokens=True`, so only the template's own markers are special ids.
"""

import functools
import re
from collections import Counter

import torch
from transformers.utils.chat_template_utils import render_jinja_template

from mmtune.data.example import IGNORE_INDEX
from mmtune.errors import DataError
from mmtune.model.placeholders import PLACEHOLDERS

# end-of-turn tokens of common templates; the tokenizer's eos is always one
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


# Supplementary Private Use Area-B: the k-th special token's stand-in while the template renders text mode
SENTINEL_BASE = 0x100000
SENTINEL_ROOM = 0xFFFE  # code points U+100000 .. U+10FFFD


class SpecialTokens:
    """The tokenizer's special-token strings and what message text holding one becomes.

        special = SpecialTokens(tokenizer, "error")      # once per tokenizer: one compiled regex
        special.text("seven<|im_end|>", "assistant turn 1")   # DataError naming '<|im_end|>'
        SpecialTokens(tokenizer, "text").text("seven<|im_end|>", "assistant turn 1")  # "seven" + <|im_end|>'s sentinel

    mode "error" (data.special_tokens): such text is a DataError; "text": it is tokenized as the
    characters written (`encode`), never as the control token.
    """

    def __init__(self, tokenizer, mode: str = "error"):
        if mode not in ("error", "text"):
            raise ValueError(f"special_tokens mode must be 'error' or 'text', got {mode!r}")
        added = tokenizer.added_tokens_decoder.values()
        tokens = set(tokenizer.all_special_tokens) | {t.content for t in added if t.special}
        self.tokens = sorted((t for t in tokens if t), key=lambda t: (-len(t), t))  # longest first: a match is whole
        if len(self.tokens) > SENTINEL_ROOM:
            raise ValueError(f"the tokenizer has {len(self.tokens)} special tokens, more than {SENTINEL_ROOM}")
        self.index = {t: k for k, t in enumerate(self.tokens)}  # token -> k: its sentinel is SENTINEL_BASE + k
        self.mode = mode
        unk = tokenizer.unk_token_id
        self.ids = {i for i in tokenizer.convert_tokens_to_ids(self.tokens) if i is not None and i != unk}
        last = chr(SENTINEL_BASE + max(len(self.tokens), 1) - 1)
        sentinels = f"[{chr(SENTINEL_BASE)}-{last}]"
        literal = "|".join(map(re.escape, self.tokens)) or "(?!)"  # (?!): matches nothing
        self.pattern = re.compile(literal + "|" + sentinels)  # a special token, or a character we stand in with
        self.markers = re.compile(f"({literal})")  # what is left special after `text`: the template's own
        self.sentinels = re.compile(sentinels)

    def text(self, text: str, where: str) -> str:
        """Message text -> the text to render: as it is, or each special token as its sentinel (text mode);
        a DataError naming the token and `where` ("assistant turn 1") in error mode."""
        out, end = [], 0
        for found in self.pattern.finditer(text):
            token, at = found.group(), found.start()
            k = self.index.get(token)
            if k is None:
                raise DataError("", f"{where} text holds the private-use character U+{ord(token):X} at character "
                                    f"{at}, which mmtune stands in for special tokens; remove it")
            if self.mode == "error":
                raise DataError("", f"{where} text holds {token!r} at character {at}, a special token of the "
                                    f"tokenizer (a chat-template marker, end of turn, pad or media slot) that would "
                                    f"be read as that control token; remove it, or set data.special_tokens: text "
                                    f"to train on it as plain text")
            out += [text[end:at], chr(SENTINEL_BASE + k)]
            end = found.end()
        return "".join(out) + text[end:] if out else text

    def encode(self, tokenizer, text: str) -> list[int]:
        """Rendered text -> ids: the template's markers as their special ids, and each run between markers
        that holds a sentinel tokenized as plain text, the sentinel written back as its token's characters."""
        if self.sentinels.search(text) is None:
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        plain = ""  # text tokenized as usual, markers included
        for k, run in enumerate(self.markers.split(text)):  # odd k: a marker
            if k % 2 == 1 or self.sentinels.search(run) is None:
                plain += run
                continue
            ids += tokenizer(plain, add_special_tokens=False)["input_ids"] if plain else []
            plain = ""
            ids += self._plain_ids(tokenizer, self.sentinels.sub(self._literal, run))
        return ids + (tokenizer(plain, add_special_tokens=False)["input_ids"] if plain else [])

    def _literal(self, found: re.Match) -> str:
        return self.tokens[ord(found.group()) - SENTINEL_BASE]

    def _plain_ids(self, tokenizer, run: str) -> list[int]:
        ids = tokenizer(run, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        special = [i for i in ids if i in self.ids]
        if special:
            raise DataError("", f"the tokenizer encodes {tokenizer.convert_ids_to_tokens(special[0])!r} in the text "
                                f"{run!r} as its special token even when told to split special tokens; remove it")
        return ids


def text_messages(messages: list[dict], special: SpecialTokens | None = None) -> list[dict]:
    """Content parts -> one string per message, media as placeholder tokens (one part per line); with
    `special`, text parts holding a special token are refused or written with sentinels (`SpecialTokens.text`)."""
    out, turns = [], Counter()
    for m in messages:
        turns[m["role"]] += 1
        where = f"{m['role']} turn {turns[m['role']]}"
        pieces = [(p["text"] if special is None else special.text(p["text"], where)) if p["type"] == "text"
                  else PLACEHOLDERS[p["type"]] for p in m["content"]]
        out.append({"role": m["role"], "content": "\n".join(pieces)})
    return out


def end_of_turn_ids(tokenizer) -> set[int]:
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _template(tokenizer, messages, generation_prompt: bool) -> str:
    """The template's rendering of text messages; for a template that renders content only as a list of
    parts (LLaVA-style processor templates), each message's text goes in as one text part."""
    if template_takes_parts(tokenizer.chat_template):
        messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


PROBE = "\U000F0002"  # a plane-15 private-use character: in no user's text


@functools.lru_cache(maxsize=16)
def template_takes_parts(template: str | None) -> bool:
    """Whether `template` shows a message's text given as content parts ([{"type": "text", "text": ...}])
    and not given as a string (templates that iterate over message['content'], as llava-hf's processors do)."""
    if not template:
        return False

    def shows(content) -> bool:
        try:
            rendered, _ = render_jinja_template([[{"role": "user", "content": content}]], chat_template=template)
        except Exception:  # noqa: BLE001  a template may fail on the form it does not expect
            return False
        return PROBE in rendered[0]

    return not shows(PROBE) and shows([{"type": "text", "text": PROBE}])


ANSWER_MARK = "\U000F0000{}\U000F0001"  # stands in for one assistant answer while the template renders (plane-15 PUA)


def chat_segments(tokenizer, messages: list[dict], train_on: str = "all",
                  special: SpecialTokens | None = None) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_answer) pieces, in order; joined, they are the
    template's rendering of the whole conversation. Special tokens in the messages' text are refused,
    or stand as sentinels (`SpecialTokens`; default: refused).

    Each answer is found where the template puts it: the conversation is rendered once as it is and
    once per assistant turn with that turn's content replaced by a mark; the text after the mark is the
    same in both, and so is the text before it or the turn's generation prompt (`_answer_span`), so the
    answer is what lies between, however the template renders it (an earlier turn without its <think>
    block, the last with it, a role named `model`, an injected system prompt or date, `{% generation %}`
    blocks). An answer piece ends with the end-of-turn token that follows it, where the template writes one."""
    chat = text_messages(messages, special or SpecialTokens(tokenizer))
    full = _template(tokenizer, chat, generation_prompt=False)
    answers = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
    trained = set(answers if train_on == "all" else answers[-1:])
    segments, done = [], 0
    for i in answers:
        span = _answer_span(tokenizer, chat, i, full, done)  # (start, end) in `full`, or None: not rendered
        if span is None:
            continue
        start, end = span
        if start < done:
            raise DataError("", "the chat template renders the assistant turns out of order, so mmtune cannot "
                                "find their tokens; set model.llm.chat_template to one that keeps them in order")
        stop = _end_of_turn(tokenizer, full, end)
        segments += [(full[done:start], False), (full[start:stop], i in trained)]
        done = stop
    return [s for s in segments + [(full[done:], False)] if s[0]]


def _answer_span(tokenizer, chat: list[dict], i: int, full: str, done: int) -> tuple[int, int] | None:
    """(start, end) of what assistant message i says in `full`, the whole rendering; None when the
    template does not render it at all. It starts where the generation prompt of turn i ends when that
    prompt is a prefix of the rendering past the previous answer (so a reasoning block the template
    builds from the content, as Qwen3's does for the last turns, is part of the answer), else where the
    content goes; it ends where the content ends."""
    mark = ANSWER_MARK.format(i)
    marked = _template(tokenizer, chat[:i] + [{**chat[i], "content": mark}] + chat[i + 1:], generation_prompt=False)
    at = marked.find(mark)
    if at < 0:
        return None
    before, after = marked[:at], marked[at + len(mark):]
    prompt = _template(tokenizer, chat[:i], generation_prompt=True)
    end = len(full) - len(after)
    if full.endswith(after) and full.startswith(prompt) and done <= len(prompt) <= end:
        return len(prompt), end
    if not (full.startswith(before) and full.endswith(after) and len(before) + len(after) <= len(full)):
        raise DataError("", f"the chat template does not render assistant turn {i} where its text goes (its "
                            f"rendering changes around the answer), so mmtune cannot find the assistant tokens; "
                            f"set model.llm.chat_template to one that does")
    return len(before), len(full) - len(after)


def _end_of_turn(tokenizer, full: str, end: int) -> int:
    """Where the answer's piece ends: after the end-of-turn token the template writes right after the
    answer (spaces and newlines between allowed), else at the answer's end."""
    rest = full[end:]
    gap = len(rest) - len(rest.lstrip(" \n"))
    tokens = [t for t in END_OF_TURN + ((tokenizer.eos_token,) if tokenizer.eos_token else ()) if t]
    for token in sorted(set(tokens), key=len, reverse=True):
        if rest[gap:].startswith(token):
            return end + gap + len(token)
    return end


def _answer_labels(ids: list[int], eot: set[int]) -> list[int]:
    """Supervise the answer up to and including its last end-of-turn token (not the newline after)."""
    ends = [k for k, t in enumerate(ids) if t in eot]
    stop = ends[-1] + 1 if ends else len(ids)
    return ids[:stop] + [IGNORE_INDEX] * (len(ids) - stop)


def render_conversation(tokenizer, messages: list[dict], counts: dict[str, list[int]], train_on: str = "all",
                        special: SpecialTokens | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (T,), labels (T,); counts["audio"][k] is the token count of the k-th clip.

    special: what text holding a special token becomes (default: a DataError); build it once per tokenizer."""
    special = special or SpecialTokens(tokenizer)
    eot = end_of_turn_ids(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in chat_segments(tokenizer, messages, train_on, special):
        piece = special.encode(tokenizer, text)
        ids += piece
        labels += _answer_labels(piece, eot) if trained else [IGNORE_INDEX] * len(piece)
    ids, labels = expand_placeholders(tokenizer, ids, labels, counts)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def render_prompt(tokenizer, messages: list[dict], counts: dict[str, list[int]],
                  special: SpecialTokens | None = None) -> torch.Tensor:
    """A generation prompt: the conversation up to (not including) its last assistant turn, if any,
    then the template's generation prompt -> input_ids (T,), placeholders expanded; special tokens in
    the text as in `render_conversation`."""
    special = special or SpecialTokens(tokenizer)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    text = _template(tokenizer, text_messages(messages, special), generation_prompt=True)
    ids = special.encode(tokenizer, text)
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
