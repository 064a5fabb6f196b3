"""Make the spoken-digits data of the speech example: three speech synthesizers and real people.

Run from the repository root (needs `espeak-ng`, `flite` and festival's `text2wave` with the
Debian voices festvox-kdlpc16k and festvox-us-slt-hts, and the Free Spoken Digit Dataset
recordings in ../shared/data/fsdd/recordings, or --fsdd DIR):

    python examples/speech_digits/make_data.py

Each utterance is a random string of 2-6 digits spoken as words ("three one four"):
- synthesized by espeak-ng (many voices), flite or festival at a random speed and pitch, or
- joined from single-digit recordings of one real person (FSDD, 8 kHz) with short pauses;
resampled to 16 kHz mono, lightly trimmed, peak-normalized and stored as Ogg/Opus. The eval
split uses only voices and one real speaker that training never hears. The seeds are fixed: a
rerun writes the same manifests and the same audio bytes. DATA.md beside this script describes
the result.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import subprocess
import tempfile
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
N_WORKERS = 2  # processes
MIN_DIGITS, MAX_DIGITS = 2, 6  # digits per utterance, inclusive
SPEED_WPM = (130, 200)  # espeak-ng -s, words per minute, inclusive
PITCH = (30, 70)  # espeak-ng -p, 0..99, inclusive
STRETCH = (0.8, 1.25)  # flite / festival diphone duration stretch (1 = the voice's own pace)
F0_MEAN = (85, 180)  # flite int_f0_target_mean, Hz
PAUSE_S = (0.05, 0.30)  # silence between two joined recordings of a real speaker, s
FADE_S = 0.005  # fade in/out of each joined recording, s (no clicks at the joins)
TRIM_TOP_DB = 40.0  # dB below the peak that counts as silence
TRIM_FRAME = 512  # samples (32 ms) per trim analysis frame
TRIM_HOP = 128  # samples (8 ms) between trim frames
TRIM_MARGIN_S = 0.05  # s of the original silence kept on each side
PEAK = 0.89  # linear peak after normalization (-1 dBFS)
# soundfile's compression_level for Opus; libsndfile maps it to a target bitrate of
# (1 - level) * 250 + 6 kbit/s, so 0.98 -> 11 kbit/s (wideband speech).
OPUS_LEVEL = 0.98
# The FSDD recordings are 8 kHz (nothing above 4 kHz): 0.99 -> 8.5 kbit/s, where the encoder
# switches to narrowband, loses nothing they hold (log-mel correlation 0.973 against 0.980 at
# 0.98, for 28% fewer bytes).
OPUS_LEVEL_NARROWBAND = 0.99
OGG_SERIAL = 0x6D6D7475  # fixed Ogg stream serial ("mmtu") so reruns give identical bytes

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng voices are "<accent>[+<variant>]": an English voice, optionally with a variant
# (espeak-ng --voices=en, espeak-ng --voices=variant).
TRAIN_ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
)
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "f5")
# Held out: a male variant (m7), a female variant (f4) and an accent (Caribbean, en-029).
EVAL_VOICES = ("en-us+m7", "en+f4", "en-029")
# Other synthesizers (Debian: flite, festival, festvox-kdlpc16k, festvox-us-slt-hts), as
# "<engine>:<voice>". flite's awb (Scottish male) is held out; kal (8 kHz) is left out: kal16 is
# the same voice at 16 kHz.
TRAIN_TTS = ("flite:kal16", "flite:rms", "flite:slt", "festival:ked_diphone", "festival:cmu_us_slt_arctic_hts")
EVAL_TTS = ("flite:awb",)
# Real people: FSDD speakers (all male; see ../shared/data/fsdd/README.md). lucas (German accent)
# is the example's held-out real voice.
TRAIN_SPEAKERS = ("jackson", "nicolas", "george")
EVAL_SPEAKERS = ("lucas",)
FSDD_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"

# Utterances per part of each split. Each part of each split draws from its own seed (plan_split),
# so a part's rows do not change when another part's count does.
N_ESPEAK = {"train": 2000, "eval": 200}
N_TTS = {"train": 600, "eval": 60}
N_REAL = {"train": 1500, "eval": 200}

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: where it goes, what it says and how it is spoken."""

    audio: str  # path relative to the data folder, e.g. "train/00000.ogg"
    text: str
    voice: str  # espeak-ng voice, "<engine>:<voice>" or "real:<speaker>"
    kind: str  # "synthetic" | "real"
    speed: float = 1.0  # espeak-ng words per minute, or a duration stretch
    pitch: float = 0.0  # espeak-ng pitch 0..99, or flite's mean F0 in Hz
    recordings: tuple[str, ...] = ()  # real speech: the joined FSDD files, one per digit
    pauses: tuple[float, ...] = ()  # real speech: seconds of silence after each but the last


def train_voices() -> list[str]:
    """Every accent x variant combination used for training (none of EVAL_VOICES)."""
    return [a + (f"+{v}" if v else "") for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]


def _digits(rng: random.Random) -> list[str]:
    return [rng.choice(DIGIT_WORDS) for _ in range(rng.randint(MIN_DIGITS, MAX_DIGITS))]


def plan(split: str, n: int, voices: list[str], rng: random.Random) -> list[Utterance]:
    """Draw n espeak-ng utterances for one split; all randomness happens here, in the main process."""
    utts = []
    for i in range(n):
        text = " ".join(_digits(rng))
        utts.append(Utterance(
            audio=f"{split}/{i:05d}.ogg",
            text=text,
            voice=rng.choice(voices),
            kind="synthetic",
            speed=rng.randint(*SPEED_WPM),
            pitch=rng.randint(*PITCH),
        ))
    return utts


def plan_tts(split: str, n: int, voices: tuple[str, ...], rng: random.Random) -> list[Utterance]:
    """n utterances by flite / festival voices, at a random pace (and flite pitch)."""
    return [Utterance(audio=f"{split}_tts/{i:05d}.ogg", text=" ".join(_digits(rng)), voice=voices[i % len(voices)],
                      kind="synthetic", speed=round(rng.uniform(*STRETCH), 3), pitch=rng.randint(*F0_MEAN))
            for i in range(n)]


def plan_real(split: str, n: int, speakers: tuple[str, ...], fsdd: Path, rng: random.Random) -> list[Utterance]:
    """n digit strings, each joined from recordings of one real speaker (FSDD `{digit}_{speaker}_{index}.wav`)."""
    files = {(d, s): sorted(p.name for p in fsdd.glob(f"{d}_{s}_*.wav")) for d in range(10) for s in speakers}
    empty = [f"{d}_{s}_*.wav" for (d, s), names in files.items() if not names]
    if empty:
        raise SystemExit(f"error: {fsdd} has no recordings {', '.join(empty[:3])}: pass the FSDD recordings "
                         f"folder with --fsdd")
    utts = []
    for i in range(n):
        speaker = speakers[i % len(speakers)]
        words = _digits(rng)
        utts.append(Utterance(
            audio=f"{split}_real/{i:05d}.ogg", text=" ".join(words), voice=f"real:{speaker}", kind="real",
            recordings=tuple(rng.choice(files[DIGIT_WORDS.index(w), speaker]) for w in words),
            pauses=tuple(round(rng.uniform(*PAUSE_S), 3) for _ in words[1:])))
    return utts


def _read_mono(data: bytes | Path) -> np.ndarray:
    """A WAV (bytes or file) as float32 mono at SAMPLE_RATE, shape (samples,)."""
    audio, sr = sf.read(io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)  # (samples, channels) -> (samples,)
    return librosa.resample(mono, orig_sr=sr, target_sr=SAMPLE_RATE) if sr != SAMPLE_RATE else mono


def synthesize(utt: Utterance, fsdd: Path = FSDD_DIR) -> np.ndarray:
    """Speak (or join) utt.text; returns float32 mono at SAMPLE_RATE, shape (samples,)."""
    if utt.kind == "real":
        return join_recordings(utt, fsdd)
    engine, _, voice = utt.voice.rpartition(":")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        if engine == "flite":
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={utt.speed}",
                   "--setf", f"int_f0_target_mean={utt.pitch}", "-t", utt.text, "-o", str(wav)]
            subprocess.run(cmd, capture_output=True, check=True)
        elif engine == "festival":  # diphone voices honour Duration_Stretch; the HTS voice ignores it
            cmd = ["text2wave", "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {utt.speed})",
                   "-o", str(wav)]
            subprocess.run(cmd, input=utt.text.encode(), capture_output=True, check=True)
        else:
            cmd = ["espeak-ng", "-v", utt.voice, "-s", str(utt.speed), "-p", str(utt.pitch), "--stdout", utt.text]
            return _read_mono(subprocess.run(cmd, capture_output=True, check=True).stdout)
        return _read_mono(wav)


def join_recordings(utt: Utterance, fsdd: Path) -> np.ndarray:
    """The utterance's recordings, each peak-normalized and faded, joined by its pauses of silence."""
    fade = int(FADE_S * SAMPLE_RATE)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    pieces = []
    for k, name in enumerate(utt.recordings):
        clip = normalize_peak(_read_mono(fsdd / name))
        clip[:fade] *= ramp  # FSDD clips are >= 0.14 s, far longer than two fades
        clip[-fade:] *= ramp[::-1]
        pieces.append(clip)
        if k < len(utt.pauses):
            pieces.append(np.zeros(int(utt.pauses[k] * SAMPLE_RATE), dtype=np.float32))
    return np.concatenate(pieces)


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


def encode_opus(audio: np.ndarray, level: float = OPUS_LEVEL) -> bytes:
    """Ogg/Opus bytes of a mono clip at SAMPLE_RATE, compacted by compact_ogg."""
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=level)
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


def render(utt: Utterance, data_dir: Path, fsdd: Path = FSDD_DIR) -> int:
    """Synthesize, process and write one utterance; returns the file size in bytes."""
    audio = normalize_peak(trim(synthesize(utt, fsdd)))
    payload = encode_opus(audio, OPUS_LEVEL_NARROWBAND if utt.kind == "real" else OPUS_LEVEL)
    (data_dir / utt.audio).write_bytes(payload)
    return len(payload)


def write_manifest(path: Path, utts: list[Utterance]) -> None:
    """ASR-shorthand JSONL: {"audio", "text", "voice", "kind"}, audio relative to the manifest."""
    rows = (json.dumps({"audio": u.audio, "text": u.text, "voice": u.voice, "kind": u.kind}) for u in utts)
    path.write_text("".join(row + "\n" for row in rows))


def plan_split(split: str, fsdd: Path) -> list[Utterance]:
    """Every utterance of a split: espeak-ng, other synthesizers, real speakers; one seed per part."""
    held_out = split == "eval"
    return (plan(split, N_ESPEAK[split], list(EVAL_VOICES) if held_out else train_voices(),
                 random.Random(SEED + held_out))
            + plan_tts(split, N_TTS[split], EVAL_TTS if held_out else TRAIN_TTS, random.Random(SEED + 10 + held_out))
            + plan_real(split, N_REAL[split], EVAL_SPEAKERS if held_out else TRAIN_SPEAKERS, fsdd,
                        random.Random(SEED + 20 + held_out)))


def make_split(utts: list[Utterance], data_dir: Path, fsdd: Path, workers: int, desc: str) -> int:
    """Render one split's audio into its data_dir/<split>*/ folders; returns audio bytes."""
    for folder in {Path(u.audio).parent for u in utts}:
        (data_dir / folder).mkdir(parents=True, exist_ok=True)
        for stale in (data_dir / folder).glob("*.ogg"):
            stale.unlink()
    with Pool(workers) as pool:
        jobs = pool.imap(partial(render, data_dir=data_dir, fsdd=fsdd), utts, chunksize=16)
        sizes = list(tqdm(jobs, total=len(utts), desc=desc, unit="utt"))
    return sum(sizes)


def main(argv: list[str] | None = None) -> None:
    """Plan both splits from SEED, render them, print counts and sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="data folder (default: %(default)s)")
    parser.add_argument("--fsdd", type=Path, default=FSDD_DIR,
                        help="folder of the FSDD recordings {digit}_{speaker}_{index}.wav (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=N_WORKERS)
    args = parser.parse_args(argv)
    for split in ("train", "eval"):
        utts = plan_split(split, args.fsdd)
        n_bytes = make_split(utts, args.out, args.fsdd, args.workers, desc=split)
        voices = Counter(u.voice for u in utts)
        kinds = Counter(u.kind for u in utts)
        print(f"{split}: {len(utts)} utterances ({dict(kinds)}), {n_bytes / 1e6:.2f} MB audio, {len(voices)} voices")
        if split == "train":  # train.jsonl: the espeak-ng part (the main job), train_all.jsonl: every part
            write_manifest(args.out / "train_all.jsonl", utts)
            utts = [u for u in utts if Path(u.audio).parent.name == "train"]
        write_manifest(args.out / f"{split}.jsonl", utts)


if __name__ == "__main__":
    main()
