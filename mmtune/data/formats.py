"""Manifest rows to validated messages: chat, ASR shorthand and LLaVA rows, no media loaded.

Reading files is `mmtune.data.sources` (JSONL, LLaVA .json, datasets, tar shards); this module
turns one decoded row into the chat structure every form becomes:

    Sample(messages=[{"role": "user", "content": [{"type": "audio", "path": "/data/a.flac"},
                                                  {"type": "text", "text": "Transcribe the audio."}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "three one four"}]}],
           source="/data/train.jsonl:1")

Accepted rows (extra keys are ignored):
    chat       {"messages": [{"role": ..., "content": "text" | [part, ...]}, ...]}
    ASR        {"audio": PATH, "text": TRANSCRIPT, "instruction": optional prompt}
    LLaVA      {"image": PATH | [PATH, ...], "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}
               in a `.json` list or as `.jsonl` rows
Relative media paths resolve against the manifest's folder; whether the files exist is checked
when media is loaded, not here. Where rows come from a Hugging Face dataset or a tar shard, a
media value may also be the file's bytes as `{"bytes": b"...", "path": "name.flac"}` (the form
of `datasets`' Audio/Image columns with decode=False); the part then carries "bytes" and its
"path" only names it. Each bad row is a `DataError` whose source is "file.jsonl:LINE"
(1-based) or, for a `.json` list, "file.json:#INDEX" (0-based position in the list).
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass

from mmtune.errors import DataError
from mmtune.model.placeholders import AUDIO_TOKEN, IMAGE_TOKEN

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "audio", "image")
MEDIA_TYPES = ("audio", "image")
LLAVA_TAG = "<image>"  # LLaVA's image marker inside a turn's text
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
PLACEHOLDER_TEXTS = (AUDIO_TOKEN, IMAGE_TOKEN, LLAVA_TAG)  # never valid in text after conversion
ACCEPTED_ROWS = (
    '{"messages": [...]} (chat), {"audio": PATH, "text": TRANSCRIPT} (ASR) or '
    '{"image": PATH, "conversations": [...]} (LLaVA)'
)
ASR_EXAMPLE = '{"audio": "a.flac", "text": "..."}'
ROLE_ORDER = (
    "after optional system messages, turns must alternate user, assistant, user, ... "
    "starting with user"
)


@dataclass
class Sample:
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": [part, ...]}]
    source: str  # "path/to/manifest.jsonl:LINE" or "file.json:#INDEX"
    language: str | None = None  # the row's `language` column ("en", "hindi"), where it has one


def row_language(row) -> str | None:
    """A row's optional `language` (Whisper's decoder prompt uses it); a DataError when it is not text."""
    value = row.get("language") if isinstance(row, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError("", f"'language' must be a language code or name such as \"en\" or \"hindi\", got {value!r}")
    return value


def parse_row(
    row, base: str, instruction: str = "Transcribe the audio.", system: str | None = None
) -> list[dict]:
    """One decoded row to validated messages; raises DataError("", reason) when the row is bad.

        parse_row({"audio": "a.flac", "text": "hi"}, "/data")[1]
        # {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}
    """
    if not isinstance(row, dict):
        raise DataError("", f"row is a JSON {json_type(row)}, expected an object: {ACCEPTED_ROWS}")
    if "messages" in row:
        messages = _chat_messages(row["messages"], base)
        labels = [f"messages[{i}]" for i in range(len(messages))]
    elif "conversations" in row:
        messages = _llava_messages(row, base)
        labels = [f"conversations[{i}]" for i in range(len(messages))]
    elif "audio" in row or "text" in row:
        messages = _asr_messages(row, base, instruction)
        labels = ["'instruction'", "'text'"]
    else:
        raise DataError("", f"row has no 'messages' (keys: {sorted(row)}); accepted rows: {ACCEPTED_ROWS}")
    _check_conversation(messages, labels)
    if system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return messages


# ----------------------------------------------------------------------------- helpers


def json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


# ----------------------------------------------------------------------------- chat rows


def _chat_messages(messages, base: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError("", "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    return [_chat_message(m, f"messages[{i}]", base) for i, m in enumerate(messages)]


def _chat_message(message, where: str, base: str) -> dict:
    shape = '{"role": "user"|"assistant"|"system", "content": ...}'
    if not isinstance(message, dict):
        raise DataError("", f"{where} is a JSON {json_type(message)}; each message must be {shape}")
    for key in ("role", "content"):
        if key not in message:
            raise DataError("", f"{where} has no '{key}'; each message must be {shape}")
    role = message["role"]
    if role not in ROLES:
        raise DataError("", f"{where} has unknown role {role!r}; use 'system', 'user' or 'assistant'")
    return {"role": role, "content": _content(message["content"], where, base)}


def _content(content, where: str, base: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise DataError("", f"{where} content must be a string or a list of parts, got a JSON {json_type(content)}")
    return [_part(p, f"{where}.content[{j}]", base) for j, p in enumerate(content)]


def _part(part, where: str, base: str) -> dict:
    if not isinstance(part, dict):
        raise DataError("", f'{where} must be an object such as {{"type": "text", "text": "..."}}')
    kind = part.get("type")
    if kind not in PART_TYPES:
        raise DataError("", f"{where} has unknown type {kind!r}; use 'text', 'audio' or 'image'")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise DataError("", f'{where} (text) has no string \'text\'; write {{"type": "text", "text": "..."}}')
        return {"type": "text", "text": part["text"]}
    if part.get("bytes") is not None:
        return media_part(kind, {"bytes": part["bytes"], "path": part.get("path")}, base, where)
    path = part.get("path")
    if not isinstance(path, str) or not path.strip():
        raise DataError("", f"{where} ({kind}) has no 'path'; "
                            f'write {{"type": "{kind}", "path": "relative/or/absolute/file"}}')
    return media_part(kind, path, base, where)


def media_part(kind: str, value, base: str, where: str) -> dict:
    """A path string, or {"bytes": ..., "path": name} -> a content part of `kind`.

        media_part("audio", "a.flac", "/data", "audio")   # {"type": "audio", "path": "/data/a.flac"}
        media_part("audio", {"bytes": b"fLaC...", "path": "a.flac"}, "/data", "audio")
        # {"type": "audio", "path": "a.flac", "bytes": b"fLaC..."}
    """
    if isinstance(value, str) and value.strip():
        return {"type": kind, "path": _resolve(value, base)}
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)) and value["bytes"]:
        return {"type": kind, "path": str(value.get("path") or f"<{kind} bytes>"), "bytes": bytes(value["bytes"])}
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"].strip():
        return {"type": kind, "path": _resolve(value["path"], base)}
    raise DataError("", f"{where} must be a path string or {{\"bytes\": ..., \"path\": ...}} with the file's "
                        f"bytes, got {json_type(value) if not isinstance(value, dict) else 'an object without either'}")


def _resolve(path: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, path))  # an absolute `path` ignores `base`


# ----------------------------------------------------------------------------- ASR shorthand


def _asr_messages(row: dict, base: str, instruction: str) -> list[dict]:
    audio, text = row.get("audio"), row.get("text")
    if not (isinstance(audio, str) and audio.strip()) and not isinstance(audio, dict):
        raise DataError("", f"ASR row needs 'audio' as a path string beside 'text', e.g. {ASR_EXAMPLE}")
    if not isinstance(text, str):
        raise DataError("", f"ASR row needs 'text' as the transcript string beside 'audio', e.g. {ASR_EXAMPLE}")
    prompt = row.get("instruction")
    prompt = instruction if prompt is None else prompt  # a null instruction (an optional column) is the default
    if not isinstance(prompt, str):
        raise DataError("", "'instruction' must be a string (the prompt placed after the audio)")
    user = [media_part("audio", audio, base, "'audio'")]
    user += [{"type": "text", "text": prompt}] if prompt else []
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": text}]}]


# ----------------------------------------------------------------------------- LLaVA rows


def _llava_messages(row: dict, base: str) -> list[dict]:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError("", "'conversations' must be a non-empty list of "
                            '{"from": "human"|"gpt", "value": "..."} objects')
    images = [media_part("image", p, base, "'image'") for p in _llava_images(row)]
    messages = [_llava_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    _check_image_tags(messages, len(images))
    images_left = iter(images)
    for message in messages:
        message["content"] = _split_image_tags(message["content"], images_left)
    return messages


def _llava_images(row: dict) -> list:
    images = row.get("image", [])
    images = [] if images is None else [images] if isinstance(images, (str, dict)) else images
    if not isinstance(images, list) or not all((isinstance(p, str) and p.strip()) or isinstance(p, dict)
                                               for p in images):
        raise DataError("", "'image' must be a path string or a list of path strings")
    return images


def _llava_turn(turn, where: str) -> dict:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise DataError("", f'{where} must be {{"from": "human"|"gpt"|"system", "value": "text"}}')
    role = LLAVA_ROLES.get(turn.get("from"))
    if role is None:
        raise DataError("", f"{where} has unknown 'from' {turn.get('from')!r}; use 'human', 'gpt' or 'system'")
    return {"role": role, "content": turn["value"]}  # content stays a string until tags are split


def _check_image_tags(messages: list[dict], n_images: int) -> None:
    n_tags = sum(m["content"].count(LLAVA_TAG) for m in messages)
    if n_tags == n_images:
        return
    if n_images == 0:
        raise DataError("", f"text contains {n_tags} '{LLAVA_TAG}' tag(s) but the row has no 'image'; "
                            'add "image": PATH or remove the tag')
    if n_tags == 0:
        raise DataError("", f"row has {n_images} image(s) but no '{LLAVA_TAG}' tag in any turn; "
                            f"put '{LLAVA_TAG}' in the human turn where each image goes")
    raise DataError("", f"row has {n_tags} '{LLAVA_TAG}' tag(s) but {n_images} image(s); "
                        f"give one '{LLAVA_TAG}' per image, in order")


def _split_image_tags(text: str, images: Iterator[dict]) -> list[dict]:
    """"<image>\\nWhat is it?" -> [image part, text part "What is it?"]; the i-th tag gets the i-th image."""
    pieces = text.split(LLAVA_TAG)
    parts = []
    for k, piece in enumerate(pieces):
        piece = piece.lstrip("\n") if k > 0 else piece
        piece = piece.rstrip("\n") if k < len(pieces) - 1 else piece
        if piece.strip() or len(pieces) == 1:
            parts.append({"type": "text", "text": piece})
        if k < len(pieces) - 1:
            parts.append(next(images))
    return parts


# ----------------------------------------------------------------------------- checks


def _check_conversation(messages: list[dict], labels: list[str]) -> None:
    """Placeholders, media and empty answers per message, then the role order."""
    for message, where in zip(messages, labels):
        _check_message(message, where)
    _check_role_order(messages, labels)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("", 'no assistant turn; add {"role": "assistant", "content": "..."} '
                            "with the answer to train on")


def _check_message(message: dict, where: str) -> None:
    texts = [p["text"] for p in message["content"] if p["type"] == "text"]
    for token in PLACEHOLDER_TEXTS:
        if any(token in t for t in texts):
            raise DataError("", f"{where} text contains the placeholder {token!r}; put the media in the content as "
                                f'{{"type": "audio"|"image", "path": ...}} instead of writing a placeholder')
    if message["role"] == "assistant":
        media = [p["type"] for p in message["content"] if p["type"] in MEDIA_TYPES]
        if media:
            raise DataError("", f"{where} (assistant) contains an {media[0]} part; media can only be in user turns")
        if not "".join(texts).strip():
            raise DataError("", f"{where} (assistant) has empty text; give the answer to train on, or drop the row")
    elif not "".join(texts).strip() and len(texts) == len(message["content"]):
        raise DataError("", f"{where} ({message['role']}) is empty; give text or media, or drop the message")


def _check_role_order(messages: list[dict], labels: list[str]) -> None:
    first_turn = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    for i in range(first_turn, len(messages)):
        expected = ("user", "assistant")[(i - first_turn) % 2]
        role = messages[i]["role"]
        if role != expected:
            raise DataError("", f"{labels[i]} has role {role!r} where {expected!r} was expected; {ROLE_ORDER}")
