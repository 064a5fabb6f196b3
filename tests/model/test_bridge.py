import pytest
import torch

from tests.tiny import TINY_SIGLIP, logits_of, make_batch, tiny_model_config
from mmtune.errors import DataError
from mmtune.model.build import UnknownModelError, build_model


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_forward_on_two_llm_families(tokenizer_dir, llm):
    model, tokenizer = build_model(tiny_model_config(tokenizer_dir, llm=llm))
    batch = make_batch(model)
    out = model(**batch)
    assert out.logits is None  # with labels: the loss only, never (positions x vocabulary) logits
    assert logits_of(model, batch).shape[-1] == len(tokenizer)
    assert out.num_tokens == batch["input_ids"].shape[1] - 1  # every label supervised here
    assert torch.isfinite(out.loss) and out.loss.item() > 0


def test_media_tokens_land_on_placeholder_positions(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir))
    batch = make_batch(model)
    batch.pop("labels")
    embeds = model.embed(**{k: v for k, v in batch.items()})
    audio = model.audio_tokens(batch["audio_features"], batch["audio_lengths"])[0]  # (7, D)
    image = model.image_tokens(batch["pixel_values"])[0]  # (16, D)
    ids = batch["input_ids"][0]
    assert torch.equal(embeds[0, ids == model.token_ids["audio"]], audio)
    assert torch.equal(embeds[0, ids == model.token_ids["image"]], image)
    text = model.llm.get_input_embeddings()(ids[:2])
    assert torch.equal(embeds[0, :2], text)


def test_count_mismatch_names_sample_modality_and_counts(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir))
    batch = make_batch(model, n_frames=27)
    batch["audio_features"] = torch.randn(1, 80, 41)
    batch["audio_lengths"] = torch.tensor([41])  # 41 frames give 11 tokens, the text has 7
    with pytest.raises(DataError, match=r"m.jsonl:7: audio placeholder mismatch: the text has 7 .* give 11 tokens"):
        model(**batch)


def test_media_without_a_tower_is_an_error(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir, vision=False))
    with pytest.raises(ValueError, match="no image tower: add model.vision"):
        model(**make_batch(model))


def test_batch_without_supervised_tokens_is_an_error(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir))
    batch = make_batch(model)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    with pytest.raises(DataError, match="m.jsonl:7: no supervised token"):
        model(**batch)


def test_siglip_tower_keeps_every_patch(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir, audio=False, vision_config=TINY_SIGLIP))
    assert model.vision_tower.num_tokens == 16
    assert model.image_tokens(torch.randn(2, 3, 32, 32))[0].shape == (16, 32)


def test_unknown_model_type_says_what_is_supported(tokenizer_dir):
    cfg = tiny_model_config(tokenizer_dir, vision_config=dict(TINY_SIGLIP, model_type="vit"))
    with pytest.raises(UnknownModelError, match="model type 'vit' is not supported here; use one of: clip"):
        build_model(cfg)
    cfg = tiny_model_config(tokenizer_dir)
    cfg.llm.config = dict(cfg.llm.config, model_type="not_a_model")
    with pytest.raises(UnknownModelError, match="unknown model_type 'not_a_model'"):
        build_model(cfg)
