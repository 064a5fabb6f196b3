"""Score an exported Voxtral folder with transformers alone (mmtune is not imported).

    mmtune train examples/speech_digits/config_voxtral.yaml
    mmtune export --checkpoint runs/speech_digits_voxtral/final --out exported/speech_voxtral
    python examples/speech_digits/voxtral_eval.py exported/speech_voxtral examples/speech_digits/data/eval.jsonl

What a transformers user does with the folder: each clip through its WhisperFeatureExtractor
(padded to 30 s windows, as Voxtral's encoder requires), the prompt through the tokenizer's chat
template with the audio placeholder repeated once per audio token (the encoder's 1500 frames of
a window / the projector's stack), then greedy `generate` of VoxtralForConditionalGeneration.
Transcripts are scored with jiwer after lowercasing and dropping punctuation: WER overall, per
`kind` and per `voice`. Prints one JSON object; --predictions writes PATH<TAB>REFERENCE<TAB>PREDICTION lines.
"""

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import jiwer
import librosa
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, VoxtralForConditionalGeneration

AUDIO = "<|audio|>"  # mmtune's audio placeholder, in the exported tokenizer


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported Voxtral folder (mmtune export of a stack_mlp speech checkpoint)")
    parser.add_argument("manifest", help="JSONL rows {audio, text[, voice, kind]}; audio relative to the manifest")
    parser.add_argument("--instruction", default="Transcribe the audio.", help="the training prompt (data.instruction)")
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--predictions", help="also write the transcripts here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    features = AutoFeatureExtractor.from_pretrained(args.model)
    model = VoxtralForConditionalGeneration.from_pretrained(args.model).eval()
    audio = model.config.audio_config
    per_window = audio.max_source_positions // (audio.intermediate_size // audio.hidden_size)  # tokens per 30 s
    manifest = Path(args.manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    started = time.perf_counter()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"{AUDIO}\n{args.instruction}"}],
                                           tokenize=False, add_generation_prompt=True)
    predictions = []
    for start in range(0, len(rows), args.batch_size):
        waves = [librosa.load(manifest.parent / r["audio"], sr=16000)[0] for r in rows[start : start + args.batch_size]]
        # each clip: (windows, n_mels, 3000), padded to whole 30 s windows
        mels = [features(w, sampling_rate=16000, return_tensors="pt").input_features for w in waves]
        if len({m.shape[0] for m in mels}) > 1:  # clips of different window counts: prompts of different lengths
            raise SystemExit("clips longer than 30 s in one batch: give --batch-size 1")
        ids = tokenizer(prompt.replace(AUDIO, AUDIO * (per_window * mels[0].shape[0])), return_tensors="pt").input_ids
        with torch.no_grad():
            new = model.generate(input_ids=ids.expand(len(mels), -1), input_features=torch.cat(mels),
                                 max_new_tokens=args.max_new_tokens, do_sample=False)
        predictions += [normalize(t) for t in tokenizer.batch_decode(new[:, ids.shape[1]:], skip_special_tokens=True)]
    references = [normalize(r["text"]) for r in rows]
    groups = {key: defaultdict(list) for key in ("kind", "voice")}
    for r, ref, hyp in zip(rows, references, predictions):
        for key, by in groups.items():
            by[r.get(key, "")].append((ref, hyp))
    result = {"model": args.model, "num_samples": len(rows), "wer": round(jiwer.wer(references, predictions), 4),
              "seconds": round(time.perf_counter() - started, 1)}
    for key, by in groups.items():
        result[key] = {v: round(jiwer.wer([a for a, _ in p], [b for _, b in p]), 4) for v, p in sorted(by.items())}
    print(json.dumps(result, indent=2))
    if args.predictions:
        Path(args.predictions).write_text("".join(f"{r['audio']}\t{a}\t{b}\n" for r, a, b in
                                                  zip(rows, references, predictions)))


if __name__ == "__main__":
    main()
