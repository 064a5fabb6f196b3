"""A tiny bridge (Whisper + CLIP + LLM, fp32) gives the same loss on one mixed batch whether it is
collated padded or packed, with samples built through the real data path: wav and PNG files on
disk, a chat JSONL manifest, MultimodalDataset. For SDPA (packed: a block mask from the restarting
position_ids) and varlen (packed: cu_seqlens to the kernel), for llama and qwen2 LLMs."""

import pytest
import torch

from mmtune.collators import collate_packed, collate_padded
from mmtune.config import DataConfig
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.loader import encode_all
from mmtune.model import varlen
from mmtune.model.build import build_model
from mmtune.model.tokenizer import load_tokenizer
from tests.data.test_dataset import A, I, T, chat, write_manifest, write_png, write_wav
from tests.tiny import logits_of, tiny_model_config


def mixed_rows(folder):
    """Audio only, image only, two images, audio and an image, text only, multi-turn (with system)."""
    write_wav(folder / "a.wav", 0.30, "sine")
    write_wav(folder / "b.wav", 0.55, "noise", seed=1)
    write_wav(folder / "c.wav", 0.42, "noise", seed=2)
    for k, name in enumerate(("x.png", "y.png", "z.png")):
        write_png(folder / name, seed=k)
    return [chat([A("a.wav"), T("Transcribe the audio.")], "three one four"),
            chat([I("x.png"), T("Which digit is written here?")], "zero"),
            chat([I("y.png"), I("z.png"), T("What is in the image?")], "A red circle."),
            chat([A("b.wav"), I("x.png"), T("Is it even or odd?")], "even"),
            chat([T("Is it even or odd? zero seven eight")], "even odd"),
            chat([A("c.wav"), T("Transcribe the audio.")], "zero seven eight",
                 [T("Which digit is written here?")], "eight", system="Be brief.")]


@pytest.fixture(scope="module")
def examples(tmp_path_factory, tokenizer_dir):
    folder = tmp_path_factory.mktemp("mixed")
    path = write_manifest(folder, mixed_rows(folder))  # relative media paths: resolved against the manifest
    data = DataConfig(num_workers=0)
    spec = MediaSpec.from_config(tiny_model_config(tokenizer_dir), data)  # the same towers for both LLMs
    dataset = MultimodalDataset.load(str(path), load_tokenizer(tokenizer_dir), spec, data, progress=False)
    out, _ = encode_all(dataset)
    assert [(len(e.audio), len(e.images)) for e in out] == [(1, 0), (0, 1), (0, 2), (1, 1), (0, 0), (1, 0)]
    assert len({len(e) for e in out}) == len(out)  # every length differs: padding is really exercised
    return out


def build(tokenizer_dir, llm: str, attn: str):
    cfg = tiny_model_config(tokenizer_dir, llm=llm)
    cfg.attn_implementation = attn
    cfg.dtype = "float32"
    model, tokenizer = build_model(cfg)
    assert model.llm.config.use_cache is False
    return model.eval(), tokenizer


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "varlen"])
def test_padded_and_packed_give_the_same_loss(examples, tokenizer_dir, llm, attn, monkeypatch):
    model, tokenizer = build(tokenizer_dir, llm, attn)
    padded, packed = collate_padded(examples, tokenizer.pad_token_id), collate_packed(examples)
    calls = []
    segmentwise = varlen._segmentwise_sdpa
    monkeypatch.setattr(varlen, "_segmentwise_sdpa", lambda q, *a: calls.append(q.shape[0]) or segmentwise(q, *a))
    total = sum(len(e) for e in examples)  # tokens of the packed LLM row
    with torch.no_grad():
        ref, ref_logits = model(**padded), logits_of(model, padded)
        assert total not in calls  # the padded batch never goes through the LLM's cu_seqlens path
        out, out_logits = model(**packed), logits_of(model, packed)
    llm_calls = [n for n in calls if n == total]  # (the audio encoder packs its clips with varlen too)

    assert out.num_tokens == ref.num_tokens == sum(e.num_supervised for e in examples)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5
    torch.testing.assert_close(out.loss_sum, ref.loss_sum, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(out.loss_sum / out.num_tokens, ref.loss_sum / ref.num_tokens, atol=1e-5, rtol=0)
    bounds = packed["cu_seqlens"].tolist()
    for b, e in enumerate(examples):  # the same logits, sample by sample
        torch.testing.assert_close(out_logits[0, bounds[b] : bounds[b + 1]], ref_logits[b, : len(e)],
                                   atol=1e-5, rtol=1e-5)
    if attn == "varlen":
        assert model.attn_kwargs_for_packing
        assert len(llm_calls) == 2 * len(model.llm.model.layers)  # every LLM layer took the cu_seqlens path
    else:
        assert calls == [] and not model.attn_kwargs_for_packing


def test_the_comparison_would_see_samples_attending_to_each_other(examples, tokenizer_dir):
    """Control: the same packed row with positions that do not restart is one long causal sequence
    (SDPA then has no block mask), and its logits are far off the padded ones: the 1e-5 check has teeth."""
    model, tokenizer = build(tokenizer_dir, "llama", "sdpa")
    packed = collate_packed(examples)
    packed["position_ids"] = torch.arange(packed["input_ids"].shape[1])[None]
    with torch.no_grad():
        ref = logits_of(model, collate_padded(examples, tokenizer.pad_token_id))
        leaky = logits_of(model, packed)
    bounds = packed["cu_seqlens"].tolist()
    worst = max((leaky[0, bounds[b]: bounds[b + 1]] - ref[b, : len(e)]).abs().max().item()
                for b, e in enumerate(examples))
    assert worst > 1e-3
