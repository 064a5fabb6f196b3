import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn

from tests.tiny import tiny_model_config
from mmtune.collators.padded import collate_media
from mmtune.config import DataConfig
from mmtune.data.chat import end_of_turn_ids
from mmtune.data.example import Example
from mmtune.errors import DataError, MediaError
from mmtune.infer.generate import (Predictor, assistant_message, collate_prompts, decode_answer, generate,
                                   user_message)
from mmtune.model.build import build_model
from mmtune.model.checkpoint import save_checkpoint
from mmtune.model.placeholders import num_audio_tokens


def write_wav(path, seconds=0.5, hz=440.0):
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * hz * t).astype(np.float32), 16000)
    return str(path)


def write_png(path, color=(200, 30, 30)):
    Image.new("RGB", (32, 32), color).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    """A tiny audio + vision model saved as a user's checkpoint; weights scaled up so prompts differ."""
    cfg = tiny_model_config(tokenizer_dir)
    model, tokenizer = build_model(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.llm.parameters():
            p.normal_(0.0, 0.3)
    return str(save_checkpoint(model, tokenizer, cfg, tmp_path_factory.mktemp("run") / "final"))


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {"short": write_wav(folder / "short.wav", 0.3, 300.0), "long": write_wav(folder / "long.wav", 0.9, 700.0),
            "red": write_png(folder / "red.png"), "blue": write_png(folder / "blue.png", (20, 40, 220))}


def ex(ids, audio=(), images=(), source="m.jsonl:1"):
    ids = torch.tensor(ids)
    return Example(ids, torch.full_like(ids, -100), list(audio), list(images), source)


def test_collate_prompts_left_pads_and_gathers_media():
    clip, image = torch.ones(80, 3), torch.zeros(3, 32, 32)
    examples = [ex([5, 6, 7], audio=[clip], source="a:1"), ex([8], images=[image], source="a:2")]
    batch = collate_prompts(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["sources"] == ["a:1", "a:2"]
    media = collate_media(examples)
    assert set(batch) == {"input_ids", "attention_mask", "sources"} | set(media)
    assert all(torch.equal(batch[k], media[k]) for k in media)


class EchoModel(nn.Module):
    """Answers each row with its own real prompt tokens then eos; records the batches it saw."""

    def __init__(self, eos: int, pad: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.eos, self.pad, self.batches = eos, pad, []

    def generate(self, input_ids, attention_mask, sources=None, **options):
        self.batches.append((input_ids.clone(), attention_mask.clone(), options))
        rows = [ids[mask.bool()].tolist() + [self.eos] for ids, mask in zip(input_ids, attention_mask)]
        width = max(map(len, rows)) + 2
        return torch.tensor([row + [self.pad] * (width - len(row)) for row in rows])  # (B, T_new)


def test_generate_batches_by_length_and_answers_in_input_order(tokenizer_dir):
    from mmtune.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    texts = ["zero", "three one four one five", "seven eight", "nine two six", "odd"]
    examples = [ex(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    model = EchoModel(tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert generate(model, tokenizer, examples, batch_size=2, max_new_tokens=5) == texts
    lengths = [mask.sum(1).tolist() for _, mask, _ in model.batches]
    assert lengths == sorted(lengths, reverse=True) and [len(b) for b in lengths] == [2, 2, 1]
    assert all(mask[:, -1].all() for _, mask, _ in model.batches)  # left padded: every row ends at T - 1
    options = model.batches[0][2]
    assert options["max_new_tokens"] == 5 and options["do_sample"] is False
    assert set(options["eos_token_id"]) == end_of_turn_ids(tokenizer)
    assert options["pad_token_id"] == tokenizer.pad_token_id


def test_decode_stops_at_the_first_end_of_turn(predictor):
    tok = predictor.tokenizer
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    seven, eight = (tok(t, add_special_tokens=False)["input_ids"] for t in ("seven", " eight"))
    assert decode_answer(tok, seven + [eot] + eight, {eot}) == "seven"


def test_left_padded_batch_generates_what_each_prompt_does_alone(predictor, media):
    p = predictor
    samples = [p.sample("Transcribe the audio.", [("audio", media["long"])]),
               p.sample("What is in the image?", [("image", media["red"])]),
               p.sample("Which digit?", [("audio", media["short"]), ("image", media["blue"])]),
               p.sample("zero seven eight")]
    prompts = [p.encoder.prompt(s) for s in samples]
    assert len({len(e) for e in prompts}) == 4  # every row of the batch gets a different amount of padding
    options = dict(max_new_tokens=6, eos_token_id=[-1], pad_token_id=p.tokenizer.pad_token_id, use_cache=True)
    batched = p.model.generate(**collate_prompts(prompts, p.tokenizer.pad_token_id), **options)
    alone = [p.model.generate(**collate_prompts([e], p.tokenizer.pad_token_id), **options)[0] for e in prompts]
    assert batched.shape == (4, 6)
    assert [row.tolist() for row in batched] == [row.tolist() for row in alone]
    assert len({tuple(row.tolist()) for row in alone}) > 1  # the prompts really lead to different answers
    answers = generate(p.model, p.tokenizer, prompts, max_new_tokens=6, batch_size=3)
    assert answers == [generate(p.model, p.tokenizer, [e], max_new_tokens=6)[0] for e in prompts]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(predictor):
    p = predictor
    prompts = [p.encoder.prompt(p.sample("three one four"))] * 3
    state = torch.get_rng_state()
    first = generate(p.model, p.tokenizer, prompts, do_sample=True, temperature=2.0, top_p=0.9, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == generate(p.model, p.tokenizer, prompts, do_sample=True, temperature=2.0, top_p=0.9, seed=3)
    assert generate(p.model, p.tokenizer, prompts[:1], num_beams=2, max_new_tokens=4)[0] == \
        generate(p.model, p.tokenizer, prompts[:1], num_beams=2, max_new_tokens=4)[0]


def test_predictor_builds_the_chat_sample(checkpoint, media):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", data=DataConfig(system="Be brief."))
    history = [user_message("Hi", [("image", media["red"])]), assistant_message("red")]
    sample = predictor.sample("And this?", [("audio", media["short"])], history=history)
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant", "user"]
    assert sample.messages[1:3] == history
    assert sample.messages[3]["content"] == [{"type": "audio", "path": media["short"]},
                                             {"type": "text", "text": "And this?"}]
    prompt = predictor.encoder.prompt(sample)
    audio_id = predictor.tokenizer.convert_tokens_to_ids("<|audio|>")
    assert int((prompt.input_ids == audio_id).sum()) == num_audio_tokens(prompt.audio[0].shape[-1], 2)
    assert len(prompt.images) == 1


def runs_of(ids: list[int], wanted: dict[int, str]) -> list[str]:
    """The order of placeholder runs in a prompt: [5, 5, 9, 9, 1], {5: "a", 9: "i"} -> ["a", "i"]."""
    kinds = [wanted[t] for t in ids if t in wanted]
    return [k for n, k in enumerate(kinds) if n == 0 or kinds[n - 1] != k]


def test_prompt_media_follow_the_given_order(predictor, media):
    tok = predictor.tokenizer
    wanted = {tok.convert_tokens_to_ids("<|audio|>"): "audio", tok.convert_tokens_to_ids("<|image|>"): "image"}
    image, audio = ("image", media["red"]), ("audio", media["short"])
    for order in ([image, audio], [audio, image], [image, audio, image]):
        prompt = predictor.encoder.prompt(predictor.sample("Answer the spoken question.", order))
        assert runs_of(prompt.input_ids.tolist(), wanted) == [kind for kind, _ in order]
    with pytest.raises(ValueError, match="media kind must be one of"):
        user_message("x", [("video", "a.mp4")])


def test_transcribe_batches_files_and_matches_single_answers(predictor, media):
    paths = [media["short"], media["long"], media["short"]]
    texts = predictor.transcribe(paths, batch_size=2, max_new_tokens=5)
    assert texts == [predictor.answer("Transcribe the audio.", [("audio", p)], max_new_tokens=5) for p in paths]
    assert texts[0] == texts[2] and all(isinstance(t, str) for t in texts)


def test_bad_media_names_the_file(predictor, tmp_path):
    missing = str(tmp_path / "missing.wav")
    with pytest.raises(DataError, match="missing.wav"):
        predictor.transcribe([missing])
    with pytest.raises(MediaError, match="missing.png"):
        predictor.check_media("image", str(tmp_path / "missing.png"))
