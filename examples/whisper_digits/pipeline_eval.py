"""Score an exported Whisper folder with transformers alone (mmtune is not imported).

    mmtune export --checkpoint runs/whisper_digits/final --out exported/whisper_digits
    python examples/whisper_digits/pipeline_eval.py exported/whisper_digits examples/speech_digits/data/eval.jsonl

Each manifest row's clip goes through `transformers.pipeline("automatic-speech-recognition")` (greedy
by default, as `mmtune eval`; --num-beams 5 is the pipeline's own default) and the transcripts are
scored with jiwer after lowercasing and dropping punctuation: WER overall and per `voice`. Prints
one JSON object; --predictions writes PATH<TAB>REFERENCE<TAB>PREDICTION lines.
"""

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import jiwer
import librosa
from transformers import pipeline


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported Whisper folder")
    parser.add_argument("manifest", help="JSONL rows {audio, text[, voice]}; audio relative to the manifest")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--predictions", help="also write the transcripts here")
    args = parser.parse_args()
    asr = pipeline("automatic-speech-recognition", model=args.model, device="cpu")
    manifest = Path(args.manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    started = time.perf_counter()
    waves = [librosa.load(manifest.parent / r["audio"], sr=16000)[0] for r in rows]
    outputs = asr(waves, batch_size=32, generate_kwargs={"num_beams": args.num_beams,
                                                         "max_new_tokens": args.max_new_tokens})
    predictions = [normalize(o["text"]) for o in outputs]
    references = [normalize(r["text"]) for r in rows]
    by_voice = defaultdict(list)
    for r, ref, hyp in zip(rows, references, predictions):
        by_voice[r.get("voice", "")].append((ref, hyp))
    result = {"model": args.model, "num_samples": len(rows), "num_beams": args.num_beams,
              "wer": jiwer.wer(references, predictions), "seconds": round(time.perf_counter() - started, 1),
              "voices": {v: round(jiwer.wer([a for a, _ in p], [b for _, b in p]), 4) for v, p in sorted(by_voice.items())}}
    print(json.dumps(result, indent=2))
    if args.predictions:
        Path(args.predictions).write_text("".join(f"{r['audio']}\t{a}\t{b}\n" for r, a, b in
                                                  zip(rows, references, predictions)))


if __name__ == "__main__":
    main()
