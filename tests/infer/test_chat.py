import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tests.tiny import tiny_model_config
from mmtune.audio.io import load_audio
from mmtune.infer.chat import run_chat
from mmtune.infer.generate import Predictor, assistant_message, user_message
from mmtune.model.build import build_model
from mmtune.model.checkpoint import save_checkpoint
from mmtune.vision.io import load_image


@pytest.fixture
def files(tmp_path):
    t = np.arange(8000) / 16000
    sf.write(str(tmp_path / "a.wav"), (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(str(tmp_path / "cat.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    return {name: str(tmp_path / name) for name in ("a.wav", "cat.png", "bad.png", "missing.wav")}


class FakePredictor:
    """Checks media with the real loaders and records every answer call."""

    def __init__(self):
        self.calls = []

    def check_media(self, kind, path):
        load_audio(path) if kind == "audio" else load_image(path)

    def answer(self, prompt, media=(), history=None, **gen):
        self.calls.append(dict(prompt=prompt, media=list(media), history=history, gen=gen))
        return f"answer {len(self.calls)}"


def script(lines):
    """An input function that plays `lines`, then raises EOFError like a closed terminal."""
    lines = iter(lines)

    def input_fn(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None
    return input_fn


def test_media_attaches_to_the_next_turn_and_history_grows(files):
    fake, out = FakePredictor(), []
    lines = ["/image " + files["cat.png"], "/audio " + files["missing.wav"], "/image " + files["bad.png"],
             "What is it?", "", "/audio " + files["a.wav"], "And this?", "/reset", "Hi", "/quit", "never read"]
    history = run_chat(fake, script(lines), out.append, max_new_tokens=4)
    assert [c["prompt"] for c in fake.calls] == ["What is it?", "And this?", "Hi"]
    first, second, third = fake.calls
    assert (first["media"], first["history"]) == ([("image", files["cat.png"])], [])
    assert second["media"] == [("audio", files["a.wav"])]
    assert second["history"] == [user_message("What is it?", [("image", files["cat.png"])]),
                                 assistant_message("answer 1")]
    assert third["history"] == [] and third["gen"] == {"max_new_tokens": 4}
    assert history == [user_message("Hi"), assistant_message("answer 3")]
    assert f"attached image {files['cat.png']} to the next message" in out
    assert any(o.startswith("not attached:") and "missing.wav" in o for o in out)
    assert any(o.startswith("not attached:") and "bad.png" in o for o in out)
    assert [o for o in out if o.startswith("answer")] == ["answer 1", "answer 2", "answer 3"]
    assert "conversation cleared" in out


def test_media_go_in_in_the_order_attached(files):
    fake = FakePredictor()
    lines = ["/image " + files["cat.png"], "/audio " + files["a.wav"], "Answer the spoken question.",
             "/audio " + files["a.wav"], "/image " + files["cat.png"], "Answer the spoken question."]
    history = run_chat(fake, script(lines), lambda _: None)
    image, audio = ("image", files["cat.png"]), ("audio", files["a.wav"])
    assert [c["media"] for c in fake.calls] == [[image, audio], [audio, image]]
    assert [[part["type"] for part in m["content"]] for m in history if m["role"] == "user"] == \
        [["image", "audio", "text"], ["audio", "image", "text"]]


def test_eof_ends_the_chat_and_unknown_commands_are_not_sent(files):
    fake, out = FakePredictor(), []
    history = run_chat(fake, script(["/imgae x.png", "hello"]), out.append)
    assert [c["prompt"] for c in fake.calls] == ["hello"]
    assert any(o.startswith("unknown command /imgae") for o in out)
    assert history == [user_message("hello"), assistant_message("answer 1")]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, tokenizer_dir):
    cfg = tiny_model_config(tokenizer_dir)
    model, tokenizer = build_model(cfg)
    folder = save_checkpoint(model, tokenizer, cfg, tmp_path_factory.mktemp("run") / "final")
    return Predictor.from_checkpoint(str(folder), device="cpu")


def test_real_checkpoint_sees_the_whole_conversation(predictor, files, monkeypatch):
    seen, out = [], []
    real_prompt = predictor.encoder.prompt

    def spy(sample):
        seen.append((sample, real_prompt(sample)))
        return seen[-1][1]
    monkeypatch.setattr(predictor.encoder, "prompt", spy)
    lines = ["/image " + files["cat.png"], "What is in the image?", "/audio " + files["a.wav"], "And now?"]
    history = run_chat(predictor, script(lines), out.append, max_new_tokens=3)
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    answers = [history[1]["content"][0]["text"], history[3]["content"][0]["text"]]
    assert all(isinstance(a, str) for a in answers) and out[-1] == answers[1]
    sample, prompt = seen[1]
    assert sample.messages == history[:3]  # turn 2 is asked with turn 1 and its answer before it
    assert [p["type"] for p in sample.messages[0]["content"]] == ["image", "text"]
    assert [p["type"] for p in sample.messages[2]["content"]] == ["audio", "text"]
    assert (len(prompt.images), len(prompt.audio)) == (1, 1)
