"""The loss over supervised positions in chunks equals the plain full-logits loss, values and gradients."""

import pytest
import torch
from torch import nn

from mmtune.data.example import IGNORE_INDEX
from mmtune.model import loss as loss_module
from mmtune.model.build import build_model
from mmtune.model.loss import chunked_loss, full_logits_loss, head_is_plain, supervised_targets
from tests.tiny import logits_of, make_batch, tiny_model_config


def _masked_batch(model):
    """Two padded rows, part of each supervised (the prompt and the padding are not)."""
    batch = make_batch(model)
    ids = batch["input_ids"]
    labels = ids.clone()
    labels[0, :9] = IGNORE_INDEX  # the text and audio slots before the answer
    batch["labels"] = labels
    return batch


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("llm,train", [("llama", "full"), ("qwen2", "full"), ("qwen2", "lora")])
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(tokenizer_dir, llm, train, monkeypatch):
    torch.manual_seed(0)
    model, _ = build_model(tiny_model_config(tokenizer_dir, llm=llm, llm_train=train))
    model.eval()  # no dropout: both passes see the same function
    batch = _masked_batch(model)
    assert model.chunked_loss
    want, n = full_logits_loss(logits_of(model, batch), batch["labels"])
    want.backward()
    want_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    vocab = model.llm.get_output_embeddings().weight.shape[0]
    model.loss_chunk_elements = 3 * vocab  # 3 positions per chunk: several chunks
    chunks = []
    real = loss_module._chunk_loss
    monkeypatch.setattr(loss_module, "_chunk_loss", lambda h, y, head: chunks.append(len(y)) or real(h, y, head))
    out = model(**batch)
    out.loss_sum.backward()
    assert out.num_tokens == n == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert len(chunks) >= 3 and max(chunks) <= 3  # forward chunks (+ their recomputation in backward)
    torch.testing.assert_close(out.loss_sum, want, atol=1e-5, rtol=1e-6)
    got = _grads(model)
    assert got.keys() == want_grads.keys() and got
    for name, g in want_grads.items():
        torch.testing.assert_close(got[name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_llm_with_transformed_logits_computes_them_at_supervised_positions_only(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir, llm="llama"))
    model.eval()
    batch = _masked_batch(model)
    want, _ = full_logits_loss(logits_of(model, batch), batch["labels"])
    model.chunked_loss = False  # what a soft-capped LLM gets: logits_to_keep at the supervised positions
    shapes = []
    hook = model.llm.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    out = model(**batch)
    hook.remove()
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert shapes == [(n, model.llm.config.vocab_size)]  # (N, V), not (B, T, V)
    torch.testing.assert_close(out.loss_sum, want, atol=1e-5, rtol=1e-6)


def test_head_is_plain_unless_the_config_transforms_logits(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir, llm="llama"))
    assert head_is_plain(model.llm)
    model.llm.config.final_logit_softcapping = 30.0  # Gemma 2's tanh cap after the head
    assert not head_is_plain(model.llm)


def test_supervised_targets_shift_by_one():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, 7, 8, 9, 9]])
    keep, targets = supervised_targets(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    assert targets.tolist() == [5, 6, 7, 8, 9, 9]


def test_chunked_loss_of_a_bare_head_matches_cross_entropy():
    torch.manual_seed(0)
    head = nn.Linear(8, 50, bias=True)
    hidden = torch.randn(37, 8, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    got = chunked_loss(hidden, targets, head, chunk_elements=50 * 5)  # 8 chunks, the last of 2 positions
    (g_got,) = torch.autograd.grad(got, hidden)
    want = nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    (g_want,) = torch.autograd.grad(want, hidden)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tower_train", ["full", "frozen"])
def test_activation_checkpointing_covers_trained_towers_and_keeps_loss_and_gradients(tokenizer_dir, tower_train):
    torch.manual_seed(0)
    model, _ = build_model(tiny_model_config(tokenizer_dir, tower_train=tower_train))
    batch = _masked_batch(model)
    model.eval()
    model(**batch).loss_sum.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    model.enable_activation_checkpointing()
    towers = [model.audio_encoder.encoder.layers, model.vision_tower.model.encoder.layers]
    assert all(layer.gradient_checkpointing for layer in model.llm.model.layers)
    assert all(layer.gradient_checkpointing == (tower_train == "full") for layers in towers for layer in layers)
    model.train()  # checkpointing acts in training mode only; the tiny models have no dropout
    model(**batch).loss_sum.backward()
    got = _grads(model)
    assert got.keys() == want.keys()
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, atol=1e-5, rtol=1e-5, msg=name)
