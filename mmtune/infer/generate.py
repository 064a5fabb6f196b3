"""Generation from encoded prompts, and a `Predictor` that answers chats and transcribes files.

    model, tokenizer, _ = load_checkpoint("runs/digits/final")
    generate(model, tokenizer, [encoder.prompt(sample) for sample in samples])  # ["three one", ...]

    predictor = Predictor.from_checkpoint("runs/digits/final")
    predictor.transcribe(["a.flac", "b.flac"])               # ["three one four", "zero seven"]
    predictor.answer("What is in the image?", media=[("image", "cat.png")])
    predictor.answer("Answer the spoken question.", media=[("image", "7.png"), ("audio", "q.wav")])

Media go into a user turn in the order given: a model trained on image-then-audio rows is asked
image-then-audio (the omni example answers its held-out spoken questions 0.967 image-first, 0.742
audio-first).

Prompts are left-padded so every row ends where generation starts; samples are batched by
length (less padding) and the answers come back in input order. Generation stops at the
tokenizer's eos or the chat template's end-of-turn token.
"""

import contextlib
import math
import os

import torch

from mmtune.audio.features import FRAMES_PER_SECOND
from mmtune.collators.padded import check_examples, collate_media
from mmtune.config import DataConfig
from mmtune.console import progress_bar
from mmtune.data.chat import end_of_turn_ids
from mmtune.data.encode import MediaSpec, SampleEncoder
from mmtune.data.example import Example, to_device
from mmtune.data.formats import Sample
from mmtune.errors import MmtuneError
from mmtune.model.checkpoint import load_checkpoint

TOKENS_PER_SECOND = 4  # transcript room per second of audio: speech is 2-3 words, about 3 tokens, a second


def collate_prompts(examples: list[Example], pad_token_id: int) -> dict:
    """Left-pad prompts so the last real token of every row is at position T - 1.

        collate_prompts([Example(torch.tensor([5, 6, 7]), ...), Example(torch.tensor([8]), ...)], 0)
        # input_ids      [[5, 6, 7], [0, 0, 8]]    (B, T) long
        # attention_mask [[1, 1, 1], [0, 0, 1]]    (B, T) long
        # + media keys of `collate_media` and "sources"
    """
    check_examples(examples)
    T = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), T), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), T), dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        input_ids[i, T - len(e):] = e.input_ids
        attention_mask[i, T - len(e):] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    return batch | collate_media(examples) | {"sources": [e.source for e in examples]}


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model):
    """model.eval() and no grad inside; the previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def length_batches(lengths, batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.
        length_batches([3, 9, 5], 2)  # [[1, 2], [0]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k: k + batch_size] for k in range(0, len(order), batch_size)]


def generate(model, tokenizer, examples: list[Example], max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, num_beams: int = 1, batch_size: int = 16,
             seed: int = 0, progress: bool = False) -> list[str]:
    """Prompts (Examples from `SampleEncoder.prompt`) -> one stripped answer per prompt, in input order.

    Greedy unless do_sample; sampling draws from torch's RNG seeded with `seed` (the global RNG
    state is restored after).
    """
    if not examples:
        return []
    stops = sorted(end_of_turn_ids(tokenizer))
    options = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, use_cache=True,
                   eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    answers: list[str] = [""] * len(examples)
    batches = length_batches([len(e) for e in examples], batch_size)
    with eval_mode(model), _seeded(seed, model_device(model)):
        for indices in progress_bar(batches, desc="generating", unit="batch", disable=not progress, leave=False):
            batch = to_device(collate_prompts([examples[i] for i in indices], tokenizer.pad_token_id),
                              model_device(model))
            new_ids = model.generate(**batch, **options)  # (B, T_new)
            for i, ids in zip(indices, new_ids.tolist()):
                answers[i] = decode_answer(tokenizer, ids, set(stops))
    return answers


def decode_answer(tokenizer, ids: list[int], stops: set[int]) -> str:
    """New token ids -> text up to the first stop token, special tokens dropped, stripped."""
    end = next((k for k, t in enumerate(ids) if t in stops), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True).strip()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


MEDIA_KINDS = ("audio", "image")


def user_message(prompt: str, media=()) -> dict:
    """One user turn: the media in the order given, then the text (as ASR and VQA rows are written).

        user_message("Which digit?", [("image", "7.png"), ("audio", "q.wav")])
        # {"role": "user", "content": [{"type": "image", "path": "/abs/7.png"}, {"type": "audio", ...},
        #                              {"type": "text", "text": "Which digit?"}]}
    """
    content = []
    for kind, path in media:
        if kind not in MEDIA_KINDS:
            raise ValueError(f"media kind must be one of {MEDIA_KINDS}, got {kind!r} for {path}")
        content.append({"type": kind, "path": os.path.abspath(path)})
    content += [{"type": "text", "text": prompt}] if prompt else []
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


class Predictor:
    """A loaded model with its encoder: answers one chat turn or transcribes many files."""

    def __init__(self, model, tokenizer, model_cfg, data: DataConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.data = data or DataConfig()
        self.encoder = SampleEncoder(tokenizer, MediaSpec.from_config(model_cfg, self.data), self.data, train=False)

    @classmethod
    def from_checkpoint(cls, folder: str, device: str | None = None, data: DataConfig | None = None) -> "Predictor":
        """Load a checkpoint folder on `device` (default: cuda when available, else cpu).

        `data` gives the training run's data settings (system prompt, instruction, image_resize).
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, model_cfg = load_checkpoint(folder, device=device)
        return cls(model, tokenizer, model_cfg, data)

    def sample(self, prompt: str, media=(), history: list[dict] | None = None, source: str = "chat") -> Sample:
        """The conversation so far (history: chat messages) plus a new user turn with `media`
        ((kind, path) pairs, in order), as a Sample."""
        system = [{"role": "system", "content": [{"type": "text", "text": self.data.system}]}]
        messages = list(history or [])
        if self.data.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = system + messages
        return Sample(messages + [user_message(prompt, media)], source)

    def check_media(self, kind: str, path: str) -> None:
        """Load and featurize one file now; raises MediaError (bad file) or DataError (no such tower)."""
        if kind not in MEDIA_KINDS:
            raise ValueError(f"media kind must be one of {MEDIA_KINDS}, got {kind!r}")
        if kind == "audio":
            self.encoder.audio_features({"path": path})
        else:
            self.encoder.image_pixels({"path": path})

    def answer(self, prompt: str, media=(), history: list[dict] | None = None, **gen) -> str:
        """One new user turn with `media` ((kind, path) pairs, in order) after `history` -> the
        assistant's answer; gen: `generate` options."""
        example = self.encoder.prompt(self.sample(prompt, media, history))
        return generate(self.model, self.tokenizer, [example], **gen)[0]

    def transcribe(self, paths: list[str], instruction: str | None = None, batch_size: int = 16,
                   progress: bool = False, max_new_tokens: int | None = None, return_errors: bool = False,
                   **gen) -> list[str | MmtuneError]:
        """Audio files -> transcripts, in order. instruction: the training prompt (default data.instruction);
        max_new_tokens: default 32, or 4 a second of the longest clip (speech is about 3 tokens a second).

        A file that cannot be read raises its DataError (naming the file) before anything is generated;
        with return_errors=True that error takes the file's place in the list instead, and the other
        files are still transcribed (batched together as usual).
        """
        text = self.data.instruction if instruction is None else instruction
        prompts = [self._audio_prompt(text, p) for p in paths]  # Example, or the MmtuneError of a bad file
        errors = [e for e in prompts if isinstance(e, MmtuneError)]
        if errors and not return_errors:
            raise errors[0]
        examples = [e for e in prompts if not isinstance(e, MmtuneError)]
        if max_new_tokens is None:
            longest = max((a.shape[-1] for e in examples for a in e.audio), default=0) / FRAMES_PER_SECOND  # s
            max_new_tokens = max(32, math.ceil(TOKENS_PER_SECOND * longest))
        texts = iter(generate(self.model, self.tokenizer, examples, batch_size=batch_size, progress=progress,
                              max_new_tokens=max_new_tokens, **gen))
        return [e if isinstance(e, MmtuneError) else next(texts) for e in prompts]

    def _audio_prompt(self, instruction: str, path: str):
        """The prompt Example of one audio file, or the MmtuneError (a DataError naming it) it raised."""
        try:
            return self.encoder.prompt(self.sample(instruction, [("audio", path)], source=str(path)))
        except MmtuneError as e:
            return e
