import pytest
import torch

from tests.tiny import make_batch, tiny_model_config
from mmtune.model.build import build_model
from mmtune.model.plan import count_parameters, describe_parameters


def _step(model):
    """Two optimizer steps (LoRA's B starts at zero, so A only gets a gradient on the second)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)  # moves every nonzero grad
    for _ in range(2):
        opt.zero_grad()
        model(**make_batch(model)).loss.backward()
        opt.step()
    return before


@pytest.mark.parametrize("llm_train,tower_train", [("lora", "frozen"), ("full", "lora"), ("frozen", "full")])
def test_frozen_weights_bit_identical_and_trainable_ones_move(tokenizer_dir, llm_train, tower_train):
    model, _ = build_model(tiny_model_config(tokenizer_dir, llm_train=llm_train, tower_train=tower_train))
    before = _step(model)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[name], p), f"trainable {name} did not move"
        else:
            assert torch.equal(before[name], p), f"frozen {name} changed"


def test_plan_decides_which_parts_train(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable if n.startswith("llm."))
    assert any(n.startswith("llm.") for n in trainable)
    assert not any(n.startswith(("audio_encoder.", "vision_tower.")) for n in trainable)
    assert any(n.startswith("audio_projector.") for n in trainable)
    assert any(n.startswith("vision_projector.") for n in trainable)


def test_frozen_projector_does_not_train(tokenizer_dir):
    cfg = tiny_model_config(tokenizer_dir)
    cfg.vision.projector.frozen = True
    model, _ = build_model(cfg)
    assert not any(p.requires_grad for p in model.vision_projector.parameters())


def test_parameter_line(tokenizer_dir):
    model, _ = build_model(tiny_model_config(tokenizer_dir, llm_train="frozen", tower_train="frozen"))
    trainable, total = count_parameters(model)
    expected = sum(p.numel() for m in (model.audio_projector, model.vision_projector) for p in m.parameters())
    assert trainable == expected
    assert describe_parameters(model) == f"trainable: {trainable:,} / total: {total:,} ({100 * trainable / total:.2f}%)"


def test_building_a_model_leaves_the_callers_random_state_alone(tokenizer_dir):
    """init_seed decides the weights; train.seed (seeded before the build) still decides dropout and the rest."""
    cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen")
    draws, weights = [], []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        model, _ = build_model(cfg)
        draws.append(torch.rand(4))
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    torch.manual_seed(1)
    assert torch.equal(draws[0], torch.rand(4))  # as if no model had been built
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same model from init_seed
