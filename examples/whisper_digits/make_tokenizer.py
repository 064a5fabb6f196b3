"""Build Whisper's real multilingual tokenizer offline, as a transformers WhisperTokenizer folder.

    pip download openai-whisper --no-deps --no-binary :all: -d /tmp/ow && tar xzf /tmp/ow/openai_whisper-*.tar.gz -C /tmp/ow
    python examples/whisper_digits/make_tokenizer.py /tmp/ow/openai_whisper-*/whisper/assets/multilingual.tiktoken

The openai-whisper package (MIT, (c) 2022 OpenAI) ships the byte-level BPE ranks of its
multilingual vocabulary as `multilingual.tiktoken` (base64 token, rank per line). The merges are
recovered from the ranks as transformers' TikTokenConverter does, and the special tokens are added
in Whisper's order (`whisper/tokenizer.py: get_encoding`): <|endoftext|> = 50257,
<|startoftranscript|> = 50258, 99 language tokens, <|translate|>, <|transcribe|>, <|startoflm|>,
<|startofprev|>, <|nospeech|>, <|notimestamps|> = 50363 and 1,501 timestamps: 51,865 ids, the
vocabulary of whisper-tiny ... whisper-large-v2. The folder is shipped in the example
(`tokenizer/`), so nothing is downloaded when the example runs.
"""

import base64
import sys
from pathlib import Path

from transformers import WhisperTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.whisper.tokenization_whisper import LANGUAGES

NUM_LANGUAGES = 99  # whisper-large-v3 adds <|yue|>: 100 languages, 51,866 ids
TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>, 20 ms apart


def read_ranks(path: str) -> dict[bytes, int]:
    with open(path) as f:
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE ranks -> the GPT-2-style vocabulary (bytes as printable characters) and the merges, in rank order:
    a token of rank r is the merge of two lower-ranked tokens that join to it."""
    byte_char = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[c] for c in b)

    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[text(token)] = rank
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(ranks[left], ranks[right], rank, left, right) for left, right in pairs]
    merges.sort(key=lambda m: (m[2], m[0], m[1]))
    return vocab, [(text(left), text(right)) for _, _, _, left, right in merges]


def special_tokens() -> list[str]:
    languages = [f"<|{code}|>" for code in list(LANGUAGES)[:NUM_LANGUAGES]]
    return (["<|endoftext|>", "<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>",
             "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
            + [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)])


def build(tiktoken_path: str) -> WhisperTokenizer:
    ranks = read_ranks(tiktoken_path)
    vocab, merges = vocab_and_merges(ranks)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    tokenizer.add_tokens(special_tokens(), special_tokens=True)
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    return tokenizer


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    tokenizer = build(argv[0])
    out = Path(__file__).parent / "tokenizer"
    tokenizer.save_pretrained(str(out))
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"), pretty=False)  # 2.5 MB instead of 6.2 MB
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|notimestamps|>"])
    print(f"{len(tokenizer)} tokens, {ids} -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
