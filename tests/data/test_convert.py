import json
import os

import numpy as np
import pytest
import soundfile as sf

from mmtune.cli import main
from mmtune.data.convert import ConvertReport, librispeech_to_manifest, table_to_manifest
from mmtune.data.sources import read_manifest
from mmtune.errors import DataError


def clip(path) -> str:
    """0.1 s of a 440 Hz sine at 16 kHz, as WAV or FLAC from the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(str(path), 0.1 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000), 16000)
    return str(path)


def write_table(path, lines: list[str]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def manifest_rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def audio_and_text(path) -> list[tuple[str, str]]:
    """(resolved audio path, transcript) per row, as training reads the manifest."""
    samples, bad = read_manifest(path)
    assert bad == []
    return [(s.messages[0]["content"][0]["path"], s.messages[1]["content"][0]["text"]) for s in samples]


def skipped(report: ConvertReport) -> list[tuple[str, str]]:
    return [(e.source, e.reason) for e in report.skipped]


CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def cv_row(path: str, sentence: str) -> str:
    return f"c0ffee\t{path}\t{sentence}\t2\t0\t\t\t\ten\t"


@pytest.fixture
def common_voice(tmp_path):
    """cv/en/validated.tsv + cv/en/clips/: 3 good rows, then one missing clip, an empty sentence, a short row."""
    root = tmp_path / "cv" / "en"
    for name in ("a.wav", "b.wav", "c.wav", "e.wav"):
        clip(root / "clips" / name)
    table = write_table(root / "validated.tsv", [
        CV_HEADER,
        cv_row("a.wav", "Hello there."),
        cv_row("b.wav", '  "Quoted" at the start, kept as written.  '),  # TSV is unquoted: the quotes stay
        "",  # blank lines are neither rows nor skipped
        cv_row("c.wav", "Ünïcode and\ttabs? no: one tab ends the field"),  # 11 fields -> skipped
        cv_row("d.wav", "No clip for this one."),
        cv_row("e.wav", "   "),
        cv_row("c.wav", "Third good row."),
    ])
    return table, root


def test_common_voice_table_uses_clips_beside_it_and_writes_relative_paths(common_voice, tmp_path):
    table, root = common_voice
    out = tmp_path / "data" / "train.jsonl"  # another folder, created
    report = table_to_manifest(table, out)
    assert manifest_rows(out) == [
        {"audio": "../cv/en/clips/a.wav", "text": "Hello there."},
        {"audio": "../cv/en/clips/b.wav", "text": '"Quoted" at the start, kept as written.'},
        {"audio": "../cv/en/clips/c.wav", "text": "Third good row."},
    ]
    assert audio_and_text(out) == [(str(root / "clips" / "a.wav"), "Hello there."),
                                   (str(root / "clips" / "b.wav"), '"Quoted" at the start, kept as written.'),
                                   (str(root / "clips" / "c.wav"), "Third good row.")]
    assert report.rows_written == 3 and report.skipped_count == 3
    assert [source for source, _ in skipped(report)] == [f"{table}:5", f"{table}:6", f"{table}:7"]
    (_, fields), (_, missing), (_, empty) = skipped(report)
    assert fields.startswith("11 fields where the header has 10")
    assert missing == f"audio file not found: {root / 'clips' / 'd.wav'}"
    assert empty == "empty transcript"
    assert os.listdir(tmp_path / "data") == ["train.jsonl"]  # the temporary file was renamed, none left
    assert report.format().splitlines() == [
        f"{out}: 3 rows written from {table}, 3 skipped",
        f"  SKIPPED {table}:5: {fields}",
        f"  SKIPPED {table}:6: {missing}",
        f"  SKIPPED {table}:7: empty transcript",
    ]


def test_generic_csv_quoting_columns_by_name_and_absolute_paths(tmp_path):
    a, b = clip(tmp_path / "a.flac"), clip(tmp_path / "elsewhere" / "b.wav")
    table = write_table(tmp_path / "labels.csv", [
        "\ufeffFile,Transcription,speaker",  # a BOM and capitalized names, as spreadsheets write them
        'a.flac,"one, two",s1',
        f'{b},"a ""quoted""\nsecond line",s2',  # absolute path; quoted field over two lines
        "missing.flac,three,s3",
    ])
    report = table_to_manifest(table, tmp_path / "train.jsonl")
    assert manifest_rows(tmp_path / "train.jsonl") == [
        {"audio": "a.flac", "text": "one, two"},
        {"audio": os.path.join("elsewhere", "b.wav"), "text": 'a "quoted"\nsecond line'}]
    assert audio_and_text(tmp_path / "train.jsonl") == [(a, "one, two"), (b, 'a "quoted"\nsecond line')]
    assert [e.source for e in report.skipped] == [f"{table}:5"]  # the record after the two-line one


def test_named_columns_audio_dir_and_a_row_training_would_reject(tmp_path):
    clip(tmp_path / "recordings" / "x.wav")
    clip(tmp_path / "recordings" / "y.wav")
    table = write_table(tmp_path / "meta" / "list.txt", ["wav_file;label", "x.wav;seven", "y.wav;<|audio|> seven"])
    report = table_to_manifest(table, tmp_path / "train.jsonl", audio_dir=tmp_path / "recordings",
                               audio_column="wav_file", text_column="label", delimiter=";")
    assert manifest_rows(tmp_path / "train.jsonl") == [{"audio": os.path.join("recordings", "x.wav"), "text": "seven"}]
    assert [e.source for e in report.skipped] == [f"{table}:3"]
    assert "placeholder" in report.skipped[0].reason


def test_unknown_columns_name_the_table_its_columns_and_the_flag(tmp_path):
    table = write_table(tmp_path / "t.tsv", ["wav\tlabel", "a.wav\tone"])
    with pytest.raises(DataError) as info:
        table_to_manifest(table, tmp_path / "train.jsonl")
    assert info.value.source == table
    assert "'wav', 'label'" in info.value.reason and "--audio-column" in info.value.reason
    with pytest.raises(DataError) as info:
        table_to_manifest(table, tmp_path / "train.jsonl", audio_column="wav", text_column="sentence")
    assert "no column 'sentence' (--text-column)" in info.value.reason
    assert os.listdir(tmp_path) == ["t.tsv"]


def test_a_failed_run_leaves_the_previous_manifest_and_no_temp_file(tmp_path):
    clip(tmp_path / "a.wav")
    out = tmp_path / "train.jsonl"
    out.write_text('{"audio": "old.wav", "text": "old"}\n')
    table = tmp_path / "t.tsv"
    table.write_bytes(b"path\tsentence\na.wav\tgood\na.wav\tbad \xff byte\n")
    with pytest.raises(DataError) as info:
        table_to_manifest(table, out)  # row 2 was already written to the temporary file
    assert info.value.source == f"{table}:3" and "not valid UTF-8 at byte 11" in info.value.reason
    assert out.read_text() == '{"audio": "old.wav", "text": "old"}\n'
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "t.tsv", "train.jsonl"]


def test_librispeech_tree(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for utt in ("84-121-0000", "84-121-0001", "2-7-0000"):
        clip(root / utt.split("-")[0] / utt.split("-")[1] / f"{utt}.flac")
    write_table(root / "84" / "121" / "84-121.trans.txt",
                ["84-121-0000 GO DO YOU HEAR", "84-121-0001 BUT IN LESS THAN FIVE MINUTES", "84-121-0002 NO AUDIO"])
    write_table(root / "2" / "7" / "2-7.trans.txt", ["2-7-0000 FIRST", "2-7-0001"])
    out = tmp_path / "dev.jsonl"
    report = librispeech_to_manifest(root, out)
    assert audio_and_text(out) == [  # folders in sorted order
        (str(root / "2" / "7" / "2-7-0000.flac"), "FIRST"),
        (str(root / "84" / "121" / "84-121-0000.flac"), "GO DO YOU HEAR"),
        (str(root / "84" / "121" / "84-121-0001.flac"), "BUT IN LESS THAN FIVE MINUTES")]
    assert manifest_rows(out)[0] == {"audio": "LibriSpeech/dev-clean/2/7/2-7-0000.flac", "text": "FIRST"}
    assert skipped(report) == [
        (f"{root / '2' / '7' / '2-7.trans.txt'}:2", "empty transcript"),
        (f"{root / '84' / '121' / '84-121.trans.txt'}:3",
         f"audio file not found: {root / '84' / '121' / '84-121-0002.flac'}")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*\.trans\.txt file under this folder"):
        librispeech_to_manifest(tmp_path / "empty", tmp_path / "x.jsonl")


def test_format_lists_the_first_20_skipped_rows_and_hints_at_the_audio_dir(tmp_path):
    table = write_table(tmp_path / "t.csv", ["audio,text"] + [f"{i}.wav,word" for i in range(25)])
    report = table_to_manifest(table, tmp_path / "train.jsonl")
    lines = report.format().splitlines()
    assert report.rows_written == 0 and report.skipped_count == 25
    assert lines[0] == f"{tmp_path / 'train.jsonl'}: not written, no usable row in {table} (25 skipped)"
    assert lines[1] == f"  SKIPPED {table}:2: audio file not found: {tmp_path / '0.wav'}"
    assert lines[20].startswith(f"  SKIPPED {table}:21:") and lines[21] == "  ... and 5 more"
    assert "pass --audio-dir" in lines[22] and len(lines) == 23
    assert not (tmp_path / "train.jsonl").exists()  # nothing usable: no manifest written


def test_cli_convert(common_voice, tmp_path, capsys):
    table, _ = common_voice
    out = tmp_path / "train.jsonl"
    assert main(["data", "convert", "--table", table, "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{out}: 3 rows written from {table}, 3 skipped"
    assert len(manifest_rows(out)) == 3

    bad = write_table(tmp_path / "none.tsv", ["path\tsentence", "nope.wav\thi"])
    assert main(["data", "convert", "--table", bad, "--out", str(tmp_path / "none.jsonl")]) == 1
    assert "not written" in capsys.readouterr().out

    assert main(["data", "convert", "--table", table, "--audio-column", "clip", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {table}: no column 'clip' (--audio-column)") and "Traceback" not in err

    clip(tmp_path / "ls" / "1" / "2" / "1-2-0000.flac")
    write_table(tmp_path / "ls" / "1" / "2" / "1-2.trans.txt", ["1-2-0000 HELLO"])
    assert main(["data", "convert", "--librispeech", str(tmp_path / "ls"), "--out", str(tmp_path / "ls.jsonl")]) == 0
    assert manifest_rows(tmp_path / "ls.jsonl") == [{"audio": "ls/1/2/1-2-0000.flac", "text": "HELLO"}]
    assert main(["data", "convert", "--librispeech", str(tmp_path / "ls"), "--audio-dir", "x",
                 "--out", str(tmp_path / "ls.jsonl")]) == 1
    assert "--audio-dir apply to --table only" in capsys.readouterr().err
