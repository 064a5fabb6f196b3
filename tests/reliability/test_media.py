"""Bad media files are refused with the true reason: sizes from headers before decoding, truncation
called truncation, and a folder, a symlink loop or an unreadable file named as what it is."""

import errno
import os
import struct
import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmtune.audio import io as audio_io
from mmtune.audio.io import SAMPLE_RATE, load_audio, num_samples
from mmtune.cli import main
from mmtune.config import DataConfig
from mmtune.data.encode import MediaSpec, SampleEncoder
from mmtune.data.formats import Sample
from mmtune.errors import DataError, MediaError, unreadable
from mmtune.model.tokenizer import load_tokenizer
from mmtune.vision.io import MAX_PIXELS, image_size, load_image
from tests.data.test_dataset import png_header, write_manifest


def wav_header(data_bytes: int, rate: int = SAMPLE_RATE, channels: int = 1, bits: int = 16) -> bytes:
    """A 44-byte PCM RIFF/WAVE header whose data chunk claims `data_bytes` bytes."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * align, align, bits)
    riff = min(36 + data_bytes, 0xFFFFFFFF)  # the RIFF chunk: all that follows its 8-byte header
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes))


def sparse_wav(path, seconds: float):
    """A complete 16-bit mono WAV of `seconds` of silence as a sparse file: its size costs no disk."""
    data_bytes = int(seconds * SAMPLE_RATE) * 2
    with open(path, "wb") as f:
        f.write(wav_header(data_bytes))
        f.truncate(44 + data_bytes)
    return path


def noise(seconds: float, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, (int(seconds * SAMPLE_RATE), channels)).astype(np.float32)


def cut(path, keep: int):
    """Keep the first `keep` bytes of the file at `path`."""
    path.write_bytes(path.read_bytes()[:keep])
    return path


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- longer than data.max_audio_seconds: refused from the header ------------------------------------------

def test_a_2_gb_wav_over_the_limit_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    path = sparse_wav(tmp_path / "long.wav", 62_500)  # 2 GB of samples, 17.4 hours
    assert path.stat().st_size == 44 + 2 * 10**9

    def no_decode(*args, **kwargs):
        raise AssertionError("load_audio decoded a clip its header already puts over the limit")

    monkeypatch.setattr(audio_io.sf, "read", no_decode)
    start = time.perf_counter()
    message = refused(load_audio, path, max_seconds=600)
    assert time.perf_counter() - start < 0.5
    assert message == (f"audio file {path} is 62500.0 s long, over data.max_audio_seconds=600: raise it (the clip "
                       "is encoded in windows of model.audio.window_seconds) or split the file")


def test_a_clip_within_the_limit_still_loads(tmp_path):
    sf.write(tmp_path / "ok.wav", noise(1.0), SAMPLE_RATE, subtype="FLOAT")
    assert load_audio(tmp_path / "ok.wav", max_seconds=1).shape == (SAMPLE_RATE,)
    assert "is 1.0 s long, over data.max_audio_seconds=0.99" in refused(load_audio, tmp_path / "ok.wav",
                                                                          max_seconds=0.99)


def test_the_encoder_refuses_a_long_clip_before_decoding_with_one_wording(tmp_path, tokenizer_dir):
    path = str(sparse_wav(tmp_path / "long.wav", 62_500))
    data = DataConfig(max_audio_seconds=600)
    encoder = SampleEncoder(load_tokenizer(tokenizer_dir), MediaSpec(n_mels=80), data)
    start = time.perf_counter()
    decoded = refused(encoder.audio_features, {"path": path})  # the training path: load_audio(max_seconds=)
    assert time.perf_counter() - start < 0.5
    sample = Sample([{"role": "user", "content": [{"type": "audio", "path": path}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "x"}]}], "m.jsonl:1")
    with pytest.raises(DataError) as info:  # the length index: num_samples, from the header
        encoder.measure(sample)
    measured = info.value.reason
    prefix = f"audio file {path} is 62500.0 s long, over data.max_audio_seconds=600: raise it (the clip is encoded in "
    assert decoded == prefix + "windows of model.audio.window_seconds) or split the file"
    assert measured == prefix + "30 s windows) or split the file"


def test_data_check_reports_a_clip_over_the_limit_as_a_bad_row(tmp_path, capsys):
    sparse_wav(tmp_path / "long.wav", 601)
    sf.write(tmp_path / "ok.wav", noise(0.5), SAMPLE_RATE)
    manifest = write_manifest(tmp_path, [{"audio": "ok.wav", "text": "x"}, {"audio": "long.wav", "text": "x"}])
    assert main(["data", "check", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert f"{manifest}: 2 rows, 1 good, 1 bad" in out
    bad = [line for line in out.splitlines() if line.startswith("  BAD ")]
    assert len(bad) == 1
    assert bad[0].startswith(f"  BAD {manifest}:2: audio file {tmp_path / 'long.wav'} is 601.0 s long")
    assert "over data.max_audio_seconds=600: raise it" in bad[0]


# -- truncated: the data ends before the header says -------------------------------------------------------

def test_libsndfile_hides_a_cut_wav(tmp_path):
    """Why the RIFF sizes are read by hand: libsndfile clamps the header's length to the bytes there."""
    sf.write(tmp_path / "a.wav", noise(1.0), SAMPLE_RATE)  # 16-bit: 32,000 bytes of data after 44 of header
    path = cut(tmp_path / "a.wav", 44 + 16_000)
    assert sf.info(path).frames == 8000 and len(sf.read(path)[0]) == 8000


def test_a_cut_wav_is_reported_as_truncated(tmp_path):
    sf.write(tmp_path / "a.wav", noise(1.0), SAMPLE_RATE)
    path = cut(tmp_path / "a.wav", 44 + 16_000)
    expected = (f"audio file {path} is truncated: its header says 16000 samples (1.00 s) but the data ends after "
                "8000 (0.50 s); re-download or re-encode it from the original, or drop the row")
    assert refused(load_audio, path) == expected
    assert refused(num_samples, path) == expected  # the length index sees it too, from the header
    assert refused(load_audio, path, data=path.read_bytes()) == expected  # bytes from a dataset or tar shard


def test_a_header_claiming_two_hours_over_a_short_file_is_truncated_not_long(tmp_path):
    path = tmp_path / "liar.wav"
    path.write_bytes(wav_header(7200 * SAMPLE_RATE * 2) + bytes(2 * SAMPLE_RATE))  # 2 h claimed, 1 s there
    message = refused(load_audio, path, max_seconds=600)
    assert message.startswith(f"audio file {path} is truncated: its header says 115200000 samples (7200.00 s) but "
                              "the data ends after 16000 (1.00 s)")


def test_a_cut_extensible_24_bit_stereo_wav_is_truncated(tmp_path):
    sf.write(tmp_path / "a.wav", noise(1.0, channels=2), SAMPLE_RATE, subtype="PCM_24")  # 6 bytes a frame
    size = (tmp_path / "a.wav").stat().st_size
    path = cut(tmp_path / "a.wav", size - 6 * 500)
    assert "its header says 16000 samples (1.00 s) but the data ends after 15500 (0.97 s)" in refused(load_audio, path)


def test_riff_chunks_before_data_are_walked_with_their_padding(tmp_path):
    """An odd-sized LIST chunk (padded to even) and a WAVE_FORMAT_EXTENSIBLE fmt chunk before the data."""
    samples = (noise(0.1)[:, 0] * 32767).astype("<i2").tobytes()  # 1600 frames
    guid = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_PCM
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16, 22, 16, 4) + guid
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"
    body = b"WAVE" + chunks + b"data" + struct.pack("<I", len(samples)) + samples
    whole = tmp_path / "whole.wav"
    whole.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert load_audio(whole).shape == (1600,)
    path = tmp_path / "cut.wav"
    path.write_bytes(whole.read_bytes()[:-1000])
    assert "its header says 1600 samples (0.10 s) but the data ends after 1100 (0.07 s)" in refused(load_audio, path)


def test_a_wav_written_to_a_pipe_is_read_to_its_end(tmp_path):
    """A writer that cannot seek back leaves a placeholder length (ffmpeg 0xffffffff, sox 0x7ffff000): not a cut."""
    for placeholder in (0xFFFFFFFF, 0x7FFFF000):
        path = tmp_path / f"piped-{placeholder:x}.wav"
        path.write_bytes(wav_header(placeholder) + bytes(2 * 1600))
        assert load_audio(path).shape == (1600,)


def test_an_mp3_that_decodes_fewer_samples_than_its_header_is_truncated(tmp_path):
    sf.write(tmp_path / "a.mp3", noise(2.0), SAMPLE_RATE)
    assert load_audio(tmp_path / "a.mp3").shape == (2 * SAMPLE_RATE,)  # whole: as many as the header says
    path = cut(tmp_path / "a.mp3", (tmp_path / "a.mp3").stat().st_size // 2)
    assert sf.info(path).frames == 2 * SAMPLE_RATE  # the header (Xing tag) still counts all of them
    message = refused(load_audio, path)
    assert message.startswith(f"audio file {path} is truncated: its header says 32000 samples (2.00 s) but the data "
                              "ends after ")
    assert message.endswith("; re-download or re-encode it from the original, or drop the row")


# -- a path that is not a readable file ---------------------------------------------------------------------

def test_a_folder_is_called_a_folder_not_missing(tmp_path):
    (tmp_path / "clip.wav").mkdir()
    (tmp_path / "photo.png").mkdir()
    assert refused(load_audio, tmp_path / "clip.wav") == (
        f"audio file {tmp_path / 'clip.wav'} is a folder, not an audio file (name a file inside it)")
    assert refused(num_samples, tmp_path / "clip.wav").endswith("is a folder, not an audio file (name a file inside "
                                                                 "it)")
    expected = f"image file {tmp_path / 'photo.png'} is a folder, not an image file (name a file inside it)"
    assert refused(load_image, tmp_path / "photo.png") == expected
    assert refused(image_size, tmp_path / "photo.png") == expected


def test_a_symlink_loop_is_called_a_symlink_loop(tmp_path):
    os.symlink(tmp_path / "b.wav", tmp_path / "a.wav")
    os.symlink(tmp_path / "a.wav", tmp_path / "b.wav")
    os.symlink("loop.png", tmp_path / "loop.png")
    assert refused(load_audio, tmp_path / "a.wav") == (
        f"audio file {tmp_path / 'a.wav'} is a symlink loop (the link leads back to itself); point it at the real file")
    assert refused(load_image, tmp_path / "loop.png") == (
        f"image file {tmp_path / 'loop.png'} is a symlink loop (the link leads back to itself); point it at the real "
        "file")


def test_a_dangling_symlink_is_not_found_and_says_where_it_points(tmp_path):
    os.symlink(tmp_path / "gone.wav", tmp_path / "a.wav")
    message = refused(load_audio, tmp_path / "a.wav")
    assert message.startswith(f"audio file not found: {tmp_path / 'a.wav'} (check the path; it is a symlink to "
                              f"{tmp_path / 'gone.wav'}, which does not exist;")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_file_is_told_to_fix_its_permissions_not_to_re_encode(tmp_path):
    sf.write(tmp_path / "a.wav", noise(0.1), SAMPLE_RATE)
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    for name in ("a.wav", "a.png"):
        (tmp_path / name).chmod(0)
    try:
        audio, image = refused(load_audio, tmp_path / "a.wav"), refused(load_image, tmp_path / "a.png")
    finally:
        for name in ("a.wav", "a.png"):
            (tmp_path / name).chmod(0o644)
    fix = "cannot be read: permission denied; fix its permissions (or its folder's), e.g. chmod a+r"
    assert audio == f"audio file {tmp_path / 'a.wav'} {fix}" and "re-encode" not in audio
    assert image == f"image file {tmp_path / 'a.png'} {fix}"


def test_the_words_for_a_permission_error(tmp_path):
    """The same wording where the suite runs as root (and the chmod test is skipped): the reason for EACCES."""
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert unreadable(str(tmp_path / "a.wav"), denied, "an audio file") == (
        "cannot be read: permission denied; fix its permissions (or its folder's), e.g. chmod a+r")


# -- images over the pixel limit: refused from the header ---------------------------------------------------

def test_an_image_over_the_pixel_limit_is_refused_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(10_000, 7_000))  # 70 M pixels claimed in 57 bytes, no pixel data at all

    def no_decode(self):
        raise AssertionError("a pixel was decoded for an image over the limit")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    expected = (f"image {path} has 10000 x 7000 = 70000000 pixels, over the limit of {MAX_PIXELS}; resize it to at "
                f"most {MAX_PIXELS} pixels (width x height) or drop the row")
    assert refused(load_image, path) == expected
    assert refused(image_size, path) == expected
    assert "max_pixels" not in expected  # no setting of that name exists for a user to raise


def test_pillows_own_bomb_limit_gives_the_same_advice(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(20_000, 20_000))  # past Pillow's hard limit: refused inside Image.open
    message = refused(load_image, path)
    assert message.startswith(f"image {path} is over Pillow's decompression-bomb limit (")
    assert message.endswith(f"); resize it to at most {MAX_PIXELS} pixels (width x height) or drop the row")
    assert "MAX_IMAGE_PIXELS as well" not in message


def test_a_flac_whose_header_gives_no_length_is_a_media_error_not_a_crash(tmp_path):
    """A FLAC written to a pipe has total_samples = 0: libsndfile reports 2**63 - 1 frames, soundfile's read
    raises ValueError. Neither a crash nor a length of 2**63 samples reaches the caller."""
    sf.write(tmp_path / "a.flac", noise(0.5), SAMPLE_RATE)
    flac = bytearray((tmp_path / "a.flac").read_bytes())
    at = 8 + 13  # after "fLaC" and a 4-byte block header, STREAMINFO's total_samples: 4 bits of byte 13, then 4 bytes
    flac[at] &= 0xF0
    flac[at + 1: at + 5] = bytes(4)
    path = tmp_path / "piped.flac"
    path.write_bytes(bytes(flac))
    assert sf.info(path).frames == 2**63 - 1
    for fn in (load_audio, num_samples):
        assert refused(fn, path).startswith(f"cannot decode audio {path}: its header gives no length")
