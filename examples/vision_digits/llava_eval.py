"""Score an exported LLaVA folder with transformers alone (mmtune is not imported).

    mmtune export --checkpoint runs/vision_digits/stage2/final --out exported/vision_llava
    python examples/vision_digits/llava_eval.py exported/vision_llava examples/vision_digits/data/eval_digit.jsonl \
        --compare runs/vision_digits/stage2/predictions.jsonl

Each manifest row's user turn (its image and question) goes through the folder's own processor
(`AutoProcessor`: chat template, image preprocessing, image tokens) and `generate` of
`AutoModelForImageTextToText`, greedy, in batches. Prints one JSON object: exact-match accuracy
(lowercased, stripped) overall and per `task`; with --compare, mmtune's predictions.jsonl of the same
rows, and the fraction of rows where the two answers are the same string.
"""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


def user_turn(row: dict, folder: Path):
    """The row's first user message as content parts (images loaded, in order) and its reference answer."""
    messages = row["messages"]
    user = next(m for m in messages if m["role"] == "user")
    answer = next(m for m in messages if m["role"] == "assistant")["content"]
    answer = answer if isinstance(answer, str) else " ".join(p["text"] for p in answer if p["type"] == "text")
    parts, images = [], []
    for part in user["content"]:
        if part["type"] == "image":
            images.append(Image.open(folder / part["path"]).convert("RGB"))
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": part["text"]})
    return [{"role": "user", "content": parts}], images, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported LLaVA folder (mmtune export of a vision checkpoint)")
    parser.add_argument("manifest", help="JSONL rows {messages: [user turn with an image, assistant answer]}")
    parser.add_argument("--compare", help="mmtune's predictions.jsonl of the same rows (mmtune eval --predictions)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny model: as fast on one thread, and it leaves the other core alone
    processor = AutoProcessor.from_pretrained(args.model)
    processor.tokenizer.padding_side = "left"  # batched generation: prompts end where the answers start
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    manifest = Path(args.manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    started = time.perf_counter()
    answers, references = [], []
    for start in range(0, len(rows), args.batch_size):
        turns = [user_turn(r, manifest.parent) for r in rows[start : start + args.batch_size]]
        texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m, _, _ in turns]
        images = [image for _, imgs, _ in turns for image in imgs]
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            new = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        answers += [a.strip() for a in processor.batch_decode(new[:, inputs["input_ids"].shape[1]:],
                                                              skip_special_tokens=True)]
        references += [answer for _, _, answer in turns]
    right = [a.lower() == r.strip().lower() for a, r in zip(answers, references)]
    by_task = defaultdict(list)
    for row, ok in zip(rows, right):
        by_task[row.get("task", "")].append(ok)
    result = {"model": args.model, "num_samples": len(rows), "accuracy": round(sum(right) / len(rows), 4),
              "tasks": {t: round(sum(v) / len(v), 4) for t, v in sorted(by_task.items())},
              "seconds": round(time.perf_counter() - started, 1)}
    if args.compare:
        records = [json.loads(line) for line in Path(args.compare).read_text().splitlines() if line.strip()]
        # each record's source is "MANIFEST:LINE": put them in the manifest's order
        theirs = [r["prediction"] for r in sorted(records, key=lambda r: int(r["source"].rsplit(":", 1)[1]))]
        if len(theirs) != len(answers):
            raise SystemExit(f"--compare {args.compare} has {len(theirs)} rows, the manifest {len(answers)}")
        result["same_answer_as_mmtune"] = round(sum(a == t.strip() for a, t in zip(answers, theirs)) / len(rows), 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
