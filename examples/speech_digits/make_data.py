"""Make the spoken-digits data of the speech example with espeak-ng.

Run from the repository root (needs the `espeak-ng` program):

    python examples/speech_digits/make_data.py

Each utterance is a random string of 2-6 digits spoken as words ("three one four"),
synthesized with one of many espeak-ng voices at a random speed and pitch, resampled to
16 kHz mono, lightly trimmed, and stored as Ogg/Opus. The eval split uses only voices
training never hears. The seed is fixed: a rerun writes the same manifests and the same
audio bytes. DATA.md beside this script describes the result.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from tqdm import tqdm

SEED = 20240601
SAMPLE_RATE = 16000  # Hz, what the audio encoders expect
N_TRAIN = 2000  # utterances
N_EVAL = 200  # utterances
N_WORKERS = 2  # processes
MIN_DIGITS, MAX_DIGITS = 2, 6  # digits per utterance, inclusive
SPEED_WPM = (130, 200)  # espeak-ng -s, words per minute, inclusive
PITCH = (30, 70)  # espeak-ng -p, 0..99, inclusive
TRIM_TOP_DB = 40.0  # dB below the peak that counts as silence
TRIM_FRAME = 512  # samples (32 ms) per trim analysis frame
TRIM_HOP = 128  # samples (8 ms) between trim frames
TRIM_MARGIN_S = 0.05  # s of the original silence kept on each side
PEAK = 0.89  # linear peak after normalization (-1 dBFS)
# soundfile's compression_level for Opus; libsndfile maps it to a target bitrate of
# (1 - level) * 250 + 6 kbit/s, so 0.98 -> 11 kbit/s (wideband speech).
OPUS_LEVEL = 0.98
OGG_SERIAL = 0x6D6D7475  # fixed Ogg stream serial ("mmtu") so reruns give identical bytes

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Voices are "<accent>[+<variant>]": an espeak-ng English voice, optionally with a variant
# (espeak-ng --voices=en, espeak-ng --voices=variant).
TRAIN_ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
)
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "f5")
# Held out: a male variant (m7), a female variant (f4) and an accent (Caribbean, en-029).
EVAL_VOICES = ("en-us+m7", "en+f4", "en-029")

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: where it goes, what it says and how it is spoken."""

    audio: str  # path relative to the data folder, e.g. "train/00000.ogg"
    text: str
    voice: str
    speed: int  # words per minute
    pitch: int  # espeak-ng pitch, 0..99


def train_voices() -> list[str]:
    """Every accent x variant combination used for training (none of EVAL_VOICES)."""
    return [a + (f"+{v}" if v else "") for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]


def plan(split: str, n: int, voices: list[str], rng: random.Random) -> list[Utterance]:
    """Draw n utterances for one split; all randomness happens here, in the main process."""
    utts = []
    for i in range(n):
        n_digits = rng.randint(MIN_DIGITS, MAX_DIGITS)
        text = " ".join(rng.choice(DIGIT_WORDS) for _ in range(n_digits))
        utts.append(Utterance(
            audio=f"{split}/{i:05d}.ogg",
            text=text,
            voice=rng.choice(voices),
            speed=rng.randint(*SPEED_WPM),
            pitch=rng.randint(*PITCH),
        ))
    return utts


def synthesize(utt: Utterance) -> np.ndarray:
    """Speak utt.text with espeak-ng; returns float32 mono at SAMPLE_RATE, shape (samples,)."""
    cmd = ["espeak-ng", "-v", utt.voice, "-s", str(utt.speed), "-p", str(utt.pitch), "--stdout", utt.text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)  # (samples, channels) -> (samples,)
    return librosa.resample(mono, orig_sr=sr, target_sr=SAMPLE_RATE)


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading/trailing silence, keeping TRIM_MARGIN_S of it on each side."""
    _, (start, end) = librosa.effects.trim(
        audio, top_db=TRIM_TOP_DB, frame_length=TRIM_FRAME, hop_length=TRIM_HOP
    )
    margin = int(TRIM_MARGIN_S * SAMPLE_RATE)
    return audio[max(0, start - margin): min(len(audio), end + margin)]


def normalize_peak(audio: np.ndarray) -> np.ndarray:
    """Scale so the largest absolute sample is PEAK."""
    return (audio * (PEAK / max(float(np.abs(audio).max()), 1e-9))).astype(np.float32)


def encode_opus(audio: np.ndarray) -> bytes:
    """Ogg/Opus bytes of a mono clip at SAMPLE_RATE, compacted by compact_ogg."""
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=OPUS_LEVEL)
    return compact_ogg(buf.getvalue(), OGG_SERIAL)


def _ogg_crc_table() -> list[int]:
    """Lookup table of the Ogg page CRC-32 (polynomial 0x04C11DB7, not reflected)."""
    table = []
    for byte in range(256):
        r = byte << 24
        for _ in range(8):
            r = (r << 1) ^ 0x04C11DB7 if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC_TABLE = _ogg_crc_table()


def ogg_crc(page: bytes) -> int:
    """CRC of one Ogg page whose checksum field (bytes 22..25) is zeroed."""
    crc = 0
    for b in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[(crc >> 24) ^ b]
    return crc


def _strip_tag_padding(packet: bytes) -> bytes:
    """OpusTags packet without the trailing padding libsndfile adds (~500 bytes)."""
    pos = 8 + 4 + struct.unpack_from("<I", packet, 8)[0]  # magic, vendor length, vendor
    n_comments = struct.unpack_from("<I", packet, pos)[0]
    pos += 4
    for _ in range(n_comments):
        pos += 4 + struct.unpack_from("<I", packet, pos)[0]
    return packet[:pos]


def compact_ogg(data: bytes, serial: int) -> bytes:
    """Rewrite an Ogg/Opus stream with a fixed serial and an unpadded OpusTags page.

    libsndfile pads the comment header with ~500 zero bytes, a quarter of a short clip,
    and draws a random stream serial, which would make reruns differ byte for byte.
    Audio packets are copied unchanged; each page's CRC is recomputed.
    """
    out, pos = bytearray(), 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = data[pos + 26]
        header = bytearray(data[pos: pos + 27])  # fixed part, up to the segment count
        lacing = data[pos + 27: pos + 27 + n_segments]
        body = data[pos + 27 + n_segments: pos + 27 + n_segments + sum(lacing)]
        pos += 27 + n_segments + len(body)
        if body.startswith(b"OpusTags") and lacing[-1] < 255:  # whole packet on this page
            body = _strip_tag_padding(body)
            lacing = bytes([255] * (len(body) // 255) + [len(body) % 255])
        struct.pack_into("<I", header, 14, serial)
        struct.pack_into("<I", header, 22, 0)  # checksum is computed with this field zeroed
        header[26] = len(lacing)
        page = bytes(header) + lacing + body
        out += page[:22] + struct.pack("<I", ogg_crc(page)) + page[26:]
    return bytes(out)


def render(utt: Utterance, data_dir: Path) -> int:
    """Synthesize, process and write one utterance; returns the file size in bytes."""
    audio = normalize_peak(trim(synthesize(utt)))
    payload = encode_opus(audio)
    (data_dir / utt.audio).write_bytes(payload)
    return len(payload)


def write_manifest(path: Path, utts: list[Utterance]) -> None:
    """ASR-shorthand JSONL: {"audio", "text", "voice"}, audio relative to the manifest."""
    rows = (json.dumps({"audio": u.audio, "text": u.text, "voice": u.voice}) for u in utts)
    path.write_text("".join(row + "\n" for row in rows))


def make_split(split: str, utts: list[Utterance], data_dir: Path, workers: int) -> int:
    """Render one split into data_dir/<split>/ and its manifest; returns audio bytes."""
    split_dir = data_dir / split
    split_dir.mkdir(parents=True, exist_ok=True)
    for stale in split_dir.glob("*.ogg"):
        stale.unlink()
    with Pool(workers) as pool:
        jobs = pool.imap(partial(render, data_dir=data_dir), utts, chunksize=16)
        sizes = list(tqdm(jobs, total=len(utts), desc=split, unit="utt"))
    write_manifest(data_dir / f"{split}.jsonl", utts)
    return sum(sizes)


def main(argv: list[str] | None = None) -> None:
    """Plan both splits from SEED, render them, print counts and sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="data folder (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    parser.add_argument("--n-eval", type=int, default=N_EVAL)
    parser.add_argument("--workers", type=int, default=N_WORKERS)
    args = parser.parse_args(argv)
    # one generator per split, so changing --n-train leaves the eval split as it is
    splits = {
        "train": plan("train", args.n_train, train_voices(), random.Random(SEED)),
        "eval": plan("eval", args.n_eval, list(EVAL_VOICES), random.Random(SEED + 1)),
    }
    for split, utts in splits.items():
        n_bytes = make_split(split, utts, args.out, args.workers)
        voices = Counter(u.voice for u in utts)
        print(f"{split}: {len(utts)} utterances, {n_bytes / 1e6:.2f} MB audio, {len(voices)} voices")


if __name__ == "__main__":
    main()
