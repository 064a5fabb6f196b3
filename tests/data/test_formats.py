import json
import os

import pytest

from mmtune.data.formats import Sample, parse_row
from mmtune.data.sources import iter_samples as iter_manifest, read_manifest
from mmtune.errors import DataError


def write_jsonl(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def one_error(tmp_path, row) -> DataError:
    """The DataError of a manifest holding a single row (raised with on_bad='error')."""
    path = write_jsonl(tmp_path, [row])
    with pytest.raises(DataError) as info:
        read_manifest(path)
    assert info.value.source == f"{path}:1"
    return info.value


def text(t):
    return [{"type": "text", "text": t}]


# ----------------------------------------------------------------------------- good rows


def test_chat_row_resolves_paths_and_normalizes_string_content(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "audio", "path": "clips/a.flac"},
                                                     {"type": "text", "text": "Transcribe."}]},
                        {"role": "assistant", "content": "three one four"}], "duration": 1.5}
    samples, bad = read_manifest(write_jsonl(tmp_path, [row]))
    assert bad == []
    assert samples == [Sample(
        messages=[{"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "clips" / "a.flac")},
                                               {"type": "text", "text": "Transcribe."}]},
                  {"role": "assistant", "content": text("three one four")}],
        source=f"{tmp_path / 'train.jsonl'}:1")]


def test_absolute_paths_are_kept_and_system_turns_lead(tmp_path):
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "image", "path": "/abs/x.png"}]},
                        {"role": "assistant", "content": "A cat."},
                        {"role": "user", "content": "And?"},
                        {"role": "assistant", "content": "A dog."}]}
    (sample,), _ = read_manifest(write_jsonl(tmp_path, [row]))
    assert sample.messages[1]["content"] == [{"type": "image", "path": "/abs/x.png"}]
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_asr_shorthand_uses_instruction_and_row_override(tmp_path):
    rows = [{"audio": "a.flac", "text": "three one four"},
            {"audio": "b.flac", "text": "five", "instruction": "Write the digits."}]
    path = write_jsonl(tmp_path, rows)
    (a, b), _ = read_manifest(path, instruction="Listen.")
    assert a.messages == [{"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "a.flac")},
                                                       {"type": "text", "text": "Listen."}]},
                          {"role": "assistant", "content": text("three one four")}]
    assert b.messages[0]["content"][1] == {"type": "text", "text": "Write the digits."}
    assert b.source == f"{path}:2"


def test_system_prompt_is_added_unless_the_row_has_one(tmp_path):
    rows = [{"audio": "a.flac", "text": "one"},
            {"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"}]}]
    (a, b), _ = read_manifest(write_jsonl(tmp_path, rows), system="You transcribe.")
    assert a.messages[0] == {"role": "system", "content": text("You transcribe.")}
    assert b.messages[0] == {"role": "system", "content": text("Own.")}


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = write_jsonl(tmp_path, [{"audio": "a.flac", "text": "one"}, "", "   ", {"audio": "b.flac", "text": "two"}])
    samples, _ = read_manifest(path)
    assert [s.source for s in samples] == [f"{path}:1", f"{path}:4"]


def test_utf8_bom_on_the_first_line_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"audio": "a.flac", "text": "caf\u00e9"}).encode())
    (sample,), _ = read_manifest(path)
    assert sample.messages[1]["content"] == text("caf\u00e9")


def test_llava_json_splits_image_tags_in_order(tmp_path):
    rows = [{"id": "1", "image": "imgs/x.jpg",
             "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]},
            {"id": "2", "image": ["a.jpg", "/abs/b.jpg"],
             "conversations": [{"from": "system", "value": "Compare."},
                               {"from": "human", "value": "First\n<image>\nthen <image>"},
                               {"from": "gpt", "value": "Same."}]}]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    (one, two), bad = read_manifest(path)
    assert bad == []
    assert one.source == f"{path}:#0" and two.source == f"{path}:#1"
    assert one.messages == [{"role": "user", "content": [{"type": "image", "path": str(tmp_path / "imgs" / "x.jpg")},
                                                         {"type": "text", "text": "What is it?"}]},
                            {"role": "assistant", "content": text("A cat.")}]
    assert two.messages[0] == {"role": "system", "content": text("Compare.")}
    assert two.messages[1]["content"] == [{"type": "text", "text": "First"},
                                          {"type": "image", "path": str(tmp_path / "a.jpg")},
                                          {"type": "text", "text": "then "},
                                          {"type": "image", "path": "/abs/b.jpg"}]


def test_llava_rows_in_jsonl_and_text_only_llava(tmp_path):
    rows = [{"image": "x.jpg", "conversations": [{"from": "human", "value": "Describe <image>"}, {"from": "gpt", "value": "Red."}]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    (a, b), _ = read_manifest(write_jsonl(tmp_path, rows))
    assert a.messages[0]["content"] == [{"type": "text", "text": "Describe "}, {"type": "image", "path": str(tmp_path / "x.jpg")}]
    assert b.messages == [{"role": "user", "content": text("Hi")}, {"role": "assistant", "content": text("Hello.")}]


def test_skip_collects_bad_rows_and_keeps_good_ones(tmp_path):
    path = write_jsonl(tmp_path, [{"audio": "a.flac", "text": "one"}, "{oops", [1], {"audio": "b.flac", "text": "two"}])
    samples, bad = read_manifest(path, on_bad="skip")
    assert [s.source for s in samples] == [f"{path}:1", f"{path}:4"]
    assert [e.source for e in bad] == [f"{path}:2", f"{path}:3"]
    items = list(iter_manifest(path))
    assert [type(x).__name__ for x in items] == ["Sample", "DataError", "DataError", "Sample"]


def test_parse_row_works_without_a_file():
    messages = parse_row({"audio": "a.flac", "text": "hi"}, "/data")
    assert messages[0]["content"][0] == {"type": "audio", "path": os.path.normpath("/data/a.flac")}


def test_bad_on_bad_value_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="on_bad must be 'error' or 'skip', got 'ignore'"):
        read_manifest(write_jsonl(tmp_path, []), on_bad="ignore")


# ----------------------------------------------------------------------------- file-level errors


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="manifest file not found; check the path"):
        read_manifest(tmp_path / "nope.jsonl")
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match=r"unknown data extension '\.csv'; use \.jsonl .*, \.json .*\.parquet"):
        read_manifest(csv)


def test_json_file_that_is_not_a_list_or_not_json(tmp_path):
    obj = tmp_path / "one.json"
    obj.write_text('{"messages": []}')
    with pytest.raises(DataError) as info:
        read_manifest(obj, on_bad="skip")
    assert info.value.reason == ("a .json manifest must be a list of LLaVA rows, got a JSON object; "
                                 "use .jsonl for one object per line")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"id": 1,\n]')
    with pytest.raises(DataError) as info:
        read_manifest(broken)
    assert info.value.source == f"{broken}:3"
    assert info.value.reason.startswith("invalid JSON at column 1: ")


def test_non_utf8_json_file_names_the_line(tmp_path):
    path = tmp_path / "llava.json"
    path.write_bytes(b'[\n{"conversations": "caf\xe9"}\n]')
    with pytest.raises(DataError) as info:
        read_manifest(path)
    assert info.value.source == f"{path}:2"
    assert info.value.reason == "file is not valid UTF-8 (invalid continuation byte); re-save the manifest as UTF-8"


# ----------------------------------------------------------------------------- row errors, one test each


def test_invalid_json_line_names_the_column(tmp_path):
    err = one_error(tmp_path, '{"audio": "a.flac", "text": }')
    assert err.reason == "invalid JSON at column 29: Expecting value; each line must be one JSON object"


def test_non_utf8_line_is_reported_with_its_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"audio": "a.flac", "text": "one"}\n{"audio": "b.flac", "text": "caf\xe9"}\n')
    samples, bad = read_manifest(path, on_bad="skip")
    assert len(samples) == 1
    assert bad[0].source == f"{path}:2"
    assert bad[0].reason == ("line is not valid UTF-8 at byte 33 (invalid continuation byte); "
                             "re-save the manifest as UTF-8")


def test_row_that_is_not_an_object(tmp_path):
    err = one_error(tmp_path, '["a.flac", "one"]')
    assert err.reason == ('row is a JSON list, expected an object: {"messages": [...]} (chat), '
                          '{"audio": PATH, "text": TRANSCRIPT} (ASR) or {"image": PATH, "conversations": [...]} (LLaVA)')


def test_row_without_messages_or_shorthand_keys(tmp_path):
    err = one_error(tmp_path, {"wav": "a.flac", "transcript": "one"})
    assert err.reason == ("row has no 'messages' (keys: ['transcript', 'wav']); accepted rows: "
                          '{"messages": [...]} (chat), {"audio": PATH, "text": TRANSCRIPT} (ASR) or '
                          '{"image": PATH, "conversations": [...]} (LLaVA)')


def test_asr_row_missing_text_or_audio(tmp_path):
    err = one_error(tmp_path, {"audio": "a.flac"})
    assert err.reason == ("ASR row needs 'text' as the transcript string beside 'audio', "
                          'e.g. {"audio": "a.flac", "text": "..."}')
    err = one_error(tmp_path, {"text": "one"})
    assert err.reason == ("ASR row needs 'audio' as a path string beside 'text', "
                          'e.g. {"audio": "a.flac", "text": "..."}')


def test_messages_not_a_list(tmp_path):
    err = one_error(tmp_path, {"messages": {"role": "user", "content": "hi"}})
    assert err.reason == "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects"


def test_message_without_role_or_content(tmp_path):
    err = one_error(tmp_path, {"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert err.reason == ("messages[0] has no 'role'; each message must be "
                          '{"role": "user"|"assistant"|"system", "content": ...}')
    err = one_error(tmp_path, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "text": "yo"}]})
    assert err.reason == ("messages[1] has no 'content'; each message must be "
                          '{"role": "user"|"assistant"|"system", "content": ...}')


def test_content_of_wrong_type(tmp_path):
    err = one_error(tmp_path, {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]})
    assert err.reason == "messages[0] content must be a string or a list of parts, got a JSON number"


def test_unknown_role(tmp_path):
    err = one_error(tmp_path, {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert err.reason == "messages[0] has unknown role 'human'; use 'system', 'user' or 'assistant'"


@pytest.mark.parametrize("roles, where, role, expected", [
    (["assistant", "user"], 0, "assistant", "user"),
    (["user", "user", "assistant"], 1, "user", "assistant"),
    (["system", "user", "assistant", "system"], 3, "system", "user"),
])
def test_wrong_role_order(tmp_path, roles, where, role, expected):
    err = one_error(tmp_path, {"messages": [{"role": r, "content": "x"} for r in roles]})
    assert err.reason == (f"messages[{where}] has role {role!r} where {expected!r} was expected; after optional "
                          "system messages, turns must alternate user, assistant, user, ... starting with user")


def test_no_assistant_turn(tmp_path):
    err = one_error(tmp_path, {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]})
    assert err.reason == 'no assistant turn; add {"role": "assistant", "content": "..."} with the answer to train on'


def test_assistant_turn_with_media(tmp_path):
    row = {"messages": [{"role": "user", "content": "Draw."},
                        {"role": "assistant", "content": [{"type": "image", "path": "x.png"}]}]}
    err = one_error(tmp_path, row)
    assert err.reason == "messages[1] (assistant) contains an image part; media can only be in user turns"


def test_llava_image_tag_in_gpt_turn_is_assistant_media(tmp_path):
    row = {"image": "x.jpg", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "<image>"}]}
    err = one_error(tmp_path, row)
    assert err.reason == "conversations[1] (assistant) contains an image part; media can only be in user turns"


@pytest.mark.parametrize("token", ["<|audio|>", "<|image|>", "<image>"])
def test_placeholder_written_in_chat_text(tmp_path, token):
    row = {"messages": [{"role": "user", "content": f"{token} Transcribe."}, {"role": "assistant", "content": "one"}]}
    err = one_error(tmp_path, row)
    assert err.reason == (f"messages[0] text contains the placeholder {token!r}; put the media in the content as "
                          '{"type": "audio"|"image", "path": ...} instead of writing a placeholder')


def test_placeholder_in_asr_transcript(tmp_path):
    err = one_error(tmp_path, {"audio": "a.flac", "text": "<|audio|> one"})
    assert err.reason.startswith("'text' text contains the placeholder '<|audio|>'")


def test_placeholder_token_in_llava_text(tmp_path):
    row = {"image": "x.jpg", "conversations": [{"from": "human", "value": "<image> <|image|>"}, {"from": "gpt", "value": "a"}]}
    err = one_error(tmp_path, row)
    assert err.reason.startswith("conversations[0] text contains the placeholder '<|image|>'")


def test_llava_tag_without_image(tmp_path):
    row = {"conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]}
    err = one_error(tmp_path, row)
    assert err.reason == ("text contains 1 '<image>' tag(s) but the row has no 'image'; "
                          'add "image": PATH or remove the tag')


def test_llava_image_without_tag(tmp_path):
    row = {"image": "x.jpg", "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A cat."}]}
    err = one_error(tmp_path, row)
    assert err.reason == ("row has 1 image(s) but no '<image>' tag in any turn; "
                          "put '<image>' in the human turn where each image goes")


def test_llava_tag_count_mismatch(tmp_path):
    row = {"image": ["a.jpg", "b.jpg"], "conversations": [{"from": "human", "value": "<image> what?"},
                                                          {"from": "gpt", "value": "A cat."}]}
    err = one_error(tmp_path, row)
    assert err.reason == "row has 1 '<image>' tag(s) but 2 image(s); give one '<image>' per image, in order"


def test_llava_bad_turns_and_image_type(tmp_path):
    err = one_error(tmp_path, {"conversations": [{"from": "bot", "value": "x"}]})
    assert err.reason == "conversations[0] has unknown 'from' 'bot'; use 'human', 'gpt' or 'system'"
    err = one_error(tmp_path, {"conversations": [{"from": "human"}]})
    assert err.reason == 'conversations[0] must be {"from": "human"|"gpt"|"system", "value": "text"}'
    err = one_error(tmp_path, {"conversations": "hi"})
    assert err.reason == ("'conversations' must be a non-empty list of "
                          '{"from": "human"|"gpt", "value": "..."} objects')
    err = one_error(tmp_path, {"image": 3, "conversations": [{"from": "human", "value": "<image>"}]})
    assert err.reason == "'image' must be a path string or a list of path strings"


@pytest.mark.parametrize("answer", ["", "  \n"])
def test_empty_assistant_text(tmp_path, answer):
    err = one_error(tmp_path, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]})
    assert err.reason == "messages[1] (assistant) has empty text; give the answer to train on, or drop the row"
    err = one_error(tmp_path, {"audio": "a.flac", "text": answer})
    assert err.reason == "'text' (assistant) has empty text; give the answer to train on, or drop the row"


def test_empty_user_turn(tmp_path):
    err = one_error(tmp_path, {"messages": [{"role": "user", "content": []}, {"role": "assistant", "content": "a"}]})
    assert err.reason == "messages[0] (user) is empty; give text or media, or drop the message"


def test_part_with_unknown_type(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "video", "path": "v.mp4"}]}, {"role": "assistant", "content": "a"}]}
    err = one_error(tmp_path, row)
    assert err.reason == "messages[0].content[0] has unknown type 'video'; use 'text', 'audio' or 'image'"


def test_part_missing_path_or_text(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.flac"}]}, {"role": "assistant", "content": "a"}]}
    err = one_error(tmp_path, row)
    assert err.reason == ('messages[0].content[0] (audio) has no \'path\'; '
                          'write {"type": "audio", "path": "relative/or/absolute/file"}')
    row = {"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}]}, {"role": "assistant", "content": "a"}]}
    err = one_error(tmp_path, row)
    assert err.reason == 'messages[0].content[0] (text) has no string \'text\'; write {"type": "text", "text": "..."}'
    row = {"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "a"}]}
    err = one_error(tmp_path, row)
    assert err.reason == 'messages[0].content[0] must be an object such as {"type": "text", "text": "..."}'


def test_a_null_instruction_is_the_default_one(tmp_path):
    (sample,), _ = read_manifest(write_jsonl(tmp_path, [{"audio": "a.flac", "text": "hi", "instruction": None}]),
                                 instruction="Say it.")
    assert sample.messages[0]["content"][1] == {"type": "text", "text": "Say it."}
