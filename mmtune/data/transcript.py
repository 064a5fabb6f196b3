"""Whisper rows: one clip and its transcript -> the decoder's tokens and labels.

    spec = TranscriptSpec(language="en", task="transcribe")
    ids, labels = render_transcript(tokenizer, sample, spec)
    # ids    [<|startoftranscript|>, <|en|>, <|transcribe|>, <|notimestamps|>, three, one, <|endoftext|>]
    # labels [-100,                  -100,   -100,           -100,             three, one, <|endoftext|>]

The decoder prompt comes from the tokenizer's special tokens and is never supervised; the
transcript and its <|endoftext|> are. A row's own `language` (Sample.language, e.g. "hi") wins
over the spec's. The user turn's text (the bridge's instruction) is not used: Whisper is prompted
by its special tokens. Rows must be one user turn with one clip and one assistant transcript, as
the ASR shorthand `{"audio": ..., "text": ..., "language": ...}` gives them.
"""

from dataclasses import dataclass

import torch

from mmtune.data.chat import SpecialTokens
from mmtune.data.example import IGNORE_INDEX
from mmtune.data.formats import Sample
from mmtune.config import ConfigError
from mmtune.errors import DataError
from mmtune.model.whisper import EOT, decoder_prompt, language_code


@dataclass
class TranscriptSpec:
    language: str | None = "en"  # the prompt's language when the row gives none; None: an English-only model
    task: str = "transcribe"  # transcribe | translate
    max_tokens: int = 448  # decoder positions (max_target_positions): longer rows are dropped


def transcript_parts(sample: Sample) -> tuple[dict, str]:
    """A Whisper row's clip part and transcript text; a DataError says what shape of row is needed."""
    users = [m for m in sample.messages if m["role"] == "user"]
    answers = [m for m in sample.messages if m["role"] == "assistant"]
    clips = [p for m in users for p in m["content"] if p["type"] == "audio"]
    if len(users) != 1 or len(answers) > 1 or len(clips) != 1:
        raise DataError("", f"a Whisper model takes one clip and its transcript per row (this row has {len(users)} "
                            f"user turns, {len(clips)} clips): write rows as {{\"audio\": PATH, \"text\": TRANSCRIPT}}")
    if any(p["type"] == "image" for m in users for p in m["content"]):
        raise DataError("", "a Whisper model takes audio only; this row has an image")
    text = "" if not answers else "".join(p["text"] for p in answers[0]["content"] if p["type"] == "text")
    return clips[0], text


def prompt_ids(tokenizer, sample: Sample, spec: TranscriptSpec) -> list[int]:
    """The row's decoder prompt: its own language (a bad one is a bad row), else the spec's."""
    language = spec.language
    if sample.language:
        try:
            language = language_code(sample.language, "'language'")
        except ConfigError as e:
            raise DataError("", str(e)) from None
    return decoder_prompt(tokenizer, language, spec.task)


def render_transcript(tokenizer, sample: Sample, spec: TranscriptSpec,
                      special: SpecialTokens | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (T,), labels (T,): the prompt (masked), then the transcript and <|endoftext|> (supervised).
    Control tokens in the transcript (e.g. "<|endoftext|>") are refused or kept as text (`SpecialTokens`)."""
    special = special or SpecialTokens(tokenizer)
    _, text = transcript_parts(sample)
    prompt = prompt_ids(tokenizer, sample, spec)
    answer = special.encode(tokenizer, special.text(text, "transcript")) + [tokenizer.convert_tokens_to_ids(EOT)]
    ids = torch.tensor(prompt + answer, dtype=torch.long)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt) + answer, dtype=torch.long)
    return ids, labels
