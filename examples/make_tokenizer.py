"""Train the small byte-level BPE tokenizer an offline example ships (ChatML template, placeholders).

    python examples/make_tokenizer.py examples/speech_digits/data/train.jsonl --out examples/speech_digits/tokenizer

Real LLMs bring their own tokenizer; this one exists so the examples run with no download.
It learns from every text in the manifests (prompts and answers) plus the chat role names.
"""

import argparse

from mmtune.data.formats import read_manifest
from mmtune.model.tokenizer import save_tokenizer, train_tokenizer


def manifest_texts(paths: list[str], instruction: str) -> list[str]:
    texts = ["system", "user", "assistant", instruction]
    for path in paths:
        samples, _ = read_manifest(path, instruction, on_bad="skip")
        for s in samples:
            texts += [p["text"] for m in s.messages for p in m["content"] if p["type"] == "text"]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--instruction", default="Transcribe the audio.")
    args = parser.parse_args()
    tokenizer = train_tokenizer(manifest_texts(args.manifests, args.instruction), args.vocab_size)
    save_tokenizer(tokenizer, args.out)
    print(f"{len(tokenizer)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
