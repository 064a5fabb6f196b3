"""The varlen attention path equals SDPA on padded input (fp32), and the backend choice falls back cleanly."""

import copy
import importlib
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from tests.tiny import TINY_CLIP, TINY_WHISPER, logits_of, tiny_model_config
from mmtune.audio.encoder import AudioEncoder
from mmtune.collators import collate_packed, collate_padded
from mmtune.data.example import Example
from mmtune.model import attention, varlen
from mmtune.model.attention import resolve_backend, transformers_name
from mmtune.model.build import build_model
from mmtune.model.placeholders import num_audio_tokens, num_image_tokens
from mmtune.model.varlen import NAME, register_varlen_attention, varlen_attention_forward
from mmtune.vision.tower import VisionTower


def _whisper(attn: str) -> WhisperEncoder:
    torch.manual_seed(0)
    config = WhisperConfig(**{k: v for k, v in TINY_WHISPER.items() if k != "model_type"})
    encoder = WhisperEncoder(config).eval()
    encoder.config._attn_implementation = attn
    return encoder


def _clips(lengths):
    """Clips (80, n) and the padded batch (A, 80, max n) with its lengths."""
    torch.manual_seed(1)
    clips = [torch.randn(80, n) for n in lengths]
    features = torch.zeros(len(clips), 80, max(lengths))
    for i, clip in enumerate(clips):
        features[i, :, : clip.shape[1]] = clip
    return clips, features, torch.tensor(lengths)


# ---- the attention function ------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_attention_equals_sdpa_on_padded_input(causal):
    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [5, 9, 3], 4, 2, 8
    q = torch.randn(1, heads, sum(lengths), dim)  # packed row (1, H, T, Dh)
    k, v = torch.randn(1, kv_heads, sum(lengths), dim), torch.randn(1, kv_heads, sum(lengths), dim)
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    module = types.SimpleNamespace(is_causal=causal, training=False)
    out, _ = varlen_attention_forward(module, q, k, v, None, scaling=dim**-0.5, cu_seq_lens_q=cu,
                                      cu_seq_lens_k=cu, max_length_q=9, max_length_k=9)
    assert out.shape == (1, sum(lengths), heads, dim)
    # the padded reference: (B, H, 9, Dh) with a key-padding (+ causal) mask
    T = max(lengths)
    pad = lambda t: torch.stack([F.pad(s, (0, 0, 0, T - s.shape[1])) for s in t[0].split(lengths, dim=1)])
    keep = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    mask = keep[:, None, None, :] & (torch.ones(T, T, dtype=torch.bool).tril() if causal else True)
    ref = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask, scale=dim**-0.5, enable_gqa=True)
    for b, (start, n) in enumerate(zip([0, 5, 14], lengths)):
        torch.testing.assert_close(out[0, start : start + n], ref[b, :, :n].transpose(0, 1), atol=1e-6, rtol=1e-5)


def test_without_cu_seqlens_the_call_is_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    module = types.SimpleNamespace(is_causal=True, training=False)
    out, _ = varlen_attention_forward(module, q, k, v, None)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2))


# ---- the LLM: packed varlen equals padded SDPA ------------------------------------------------------


def _examples(model):
    """Four samples: text only, text + audio, text + image, text + audio + image."""
    a, i = model.token_ids["audio"], model.token_ids["image"]
    n_image = num_image_tokens(32, 8)
    out = []
    torch.manual_seed(0)
    for k, (frames, image, n_text) in enumerate([(0, False, 11), (45, False, 4), (0, True, 7), (23, True, 9)]):
        text = torch.randint(10, 200, (n_text,)).tolist()
        media = [a] * (num_audio_tokens(frames, 2) if frames else 0) + [i] * (n_image if image else 0)
        ids = text[:2] + media + text[2:]
        labels = [-100] * (len(ids) - len(text) + 2) + text[2:]
        audio = [torch.randn(80, frames)] if frames else []
        images = [torch.randn(3, 32, 32)] if image else []
        out.append(Example(torch.tensor(ids), torch.tensor(labels), audio, images, f"m.jsonl:{k + 1}"))
    return out


def test_packed_varlen_logits_equal_padded_sdpa_per_sample(tokenizer_dir, monkeypatch):
    sdpa_model, tokenizer = build_model(tiny_model_config(tokenizer_dir))
    cfg = tiny_model_config(tokenizer_dir)
    cfg.attn_implementation = "varlen"
    varlen_model, _ = build_model(cfg)
    varlen_model.audio_encoder.encoder.config._attn_implementation = NAME  # audio clips packed too
    assert varlen_model.attn_kwargs_for_packing and varlen_model.audio_encoder.packed
    examples = _examples(sdpa_model)
    padded, packed = collate_padded(examples, tokenizer.pad_token_id), collate_packed(examples)
    calls = []
    segmentwise = varlen._segmentwise_sdpa
    monkeypatch.setattr(varlen, "_segmentwise_sdpa", lambda q, *a: calls.append(q.shape[0]) or segmentwise(q, *a))
    with torch.no_grad():
        ref = sdpa_model.eval()(**padded)
        out = varlen_model.eval()(**packed)
        ref_logits, out_logits = logits_of(sdpa_model, padded), logits_of(varlen_model, packed)
    bounds = packed["cu_seqlens"].tolist()
    for b, e in enumerate(examples):
        torch.testing.assert_close(out_logits[0, bounds[b] : bounds[b + 1]], ref_logits[b, : len(e)],
                                   atol=1e-5, rtol=1e-5)
    n_layers = len(varlen_model.llm.model.layers) + len(varlen_model.audio_encoder.encoder.layers)
    assert len(calls) == 2 * n_layers  # every LLM and audio layer went through cu_seqlens (loss and logits)
    assert out.num_tokens == ref.num_tokens
    torch.testing.assert_close(out.loss_sum, ref.loss_sum, atol=1e-5, rtol=1e-6)


# ---- the audio encoder --------------------------------------------------------------------


def test_audio_varlen_path_equals_each_clip_alone_and_the_padded_path():
    clips, features, lengths = _clips([37, 120, 64])
    padded, packed = AudioEncoder(_whisper("sdpa")), AudioEncoder(_whisper(register_varlen_attention()))
    assert packed.packed and not padded.packed
    with torch.no_grad():
        out, out_lengths = packed(features, lengths)
        ref, ref_lengths = padded(features, lengths)
        assert out_lengths.tolist() == ref_lengths.tolist() == [19, 60, 32]
        for i, clip in enumerate(clips):
            n = int(out_lengths[i])
            alone, _ = padded(clip[None], lengths[i : i + 1])
            torch.testing.assert_close(out[i, :n], alone[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[i, :n], ref[i, :n], atol=1e-5, rtol=1e-5)
            assert not out[i, n:].any()  # the packed path leaves zeros past each clip


def test_audio_varlen_path_has_gradients_for_every_clip():
    clips, features, lengths = _clips([10, 30])
    encoder = AudioEncoder(_whisper(register_varlen_attention()))
    features.requires_grad_(True)
    out, out_lengths = encoder(features, lengths)
    out[0, : out_lengths[0]].sum().backward()
    assert features.grad[0].abs().sum() > 0 and features.grad[1].abs().sum() == 0  # no clip leaks into another


@pytest.mark.parametrize("attn", ["sdpa", "varlen"])
def test_a_30_s_clip_equals_the_stock_whisper_encoder(attn):
    name = transformers_name(attn)
    encoder = _whisper(name)
    stock = copy.deepcopy(encoder)
    stock.config._attn_implementation = "sdpa"
    features = torch.randn(1, 80, 3000)  # 30 s of mel frames
    with torch.no_grad():
        out, lengths = AudioEncoder(encoder)(features, torch.tensor([3000]))
        ref = stock(features).last_hidden_state  # (1, 1500, C)
    assert lengths.tolist() == [1500]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---- the vision tower ---------------------------------------------------------------------


def test_vision_tower_sdpa_equals_eager():
    towers = {}
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        config = CLIPVisionConfig(**{k: v for k, v in TINY_CLIP.items() if k != "model_type"})
        config._attn_implementation = attn
        towers[attn] = VisionTower(CLIPVisionModel(config).eval())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(towers["sdpa"](pixels), towers["eager"](pixels), atol=1e-5, rtol=1e-5)


# ---- backend choice -----------------------------------------------------------------------


def _no_flash_attn(monkeypatch):
    real = importlib.import_module

    def fake(name, *args):
        if name == "flash_attn" or name.startswith("flash_attn."):
            raise ImportError("No module named 'flash_attn'")
        return real(name, *args)

    monkeypatch.setattr(attention.importlib, "import_module", fake)


def test_auto_is_sdpa_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "sdpa"
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("varlen", "cpu") == "varlen"  # the CPU stand-in: SDPA per segment
    assert resolve_backend("eager") == "eager"


def test_auto_on_cuda_without_flash_attn_is_torch_varlen(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _no_flash_attn(monkeypatch)
    assert resolve_backend("auto", "cuda") == "varlen"
    monkeypatch.setattr(attention, "torch_varlen_available", lambda: False)  # torch < 2.9
    assert resolve_backend("auto", "cuda") == "sdpa"


def test_auto_on_cuda_with_flash_attn_is_flash_attention_2(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.import_module
    monkeypatch.setattr(attention.importlib, "import_module",
                        lambda name, *a: types.ModuleType(name) if name == "flash_attn" else real(name, *a))
    assert resolve_backend("auto", "cuda") == "flash_attention_2"


def test_flash_attention_2_is_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _no_flash_attn(monkeypatch)
    with pytest.raises(RuntimeError, match="flash_attention_2 needs the flash-attn package .* use auto"):
        resolve_backend("flash_attention_2", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="flash_attention_2 needs a CUDA device"):
        resolve_backend("flash_attention_2")


def test_a_broken_flash_attn_wheel_falls_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.import_module

    def broken(name, *args):
        if name == "flash_attn":
            raise OSError("undefined symbol: _ZN3c10...")  # built against another torch
        return real(name, *args)

    monkeypatch.setattr(attention.importlib, "import_module", broken)
    assert resolve_backend("auto", "cuda") == "varlen"


# ---- the CUDA kernel's keywords across torch releases (checked on the CPU with stand-in kernels) ----


def _reference_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=None, causal=False, gqa=False):
    if not gqa:
        assert key.shape[1] == query.shape[1], "this torch's kernel has no grouped-query attention"
    return varlen._segmentwise_sdpa(query, key, value, cu_seq_q, scale, causal)


def _kernel_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _reference_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=is_causal)


def _kernel_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    return _reference_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale,
                             causal=window_size == (-1, 0), gqa=enable_gqa)


@pytest.mark.parametrize("kernel", [_kernel_2_9, _kernel_2_12])
@pytest.mark.parametrize("causal", [True, False])
def test_flash_call_adapts_to_the_kernel_signature(monkeypatch, kernel, causal):
    import torch.nn.attention.varlen as torch_varlen

    monkeypatch.setattr(torch_varlen, "varlen_attn", kernel)
    torch.manual_seed(0)
    q, k, v = torch.randn(12, 4, 8), torch.randn(12, 2, 8), torch.randn(12, 2, 8)  # (T, H, Dh), 2 kv heads
    cu = torch.tensor([0, 7, 12], dtype=torch.int32)
    out = varlen._flash_varlen(q, k, v, cu, 7, 0.3, causal)
    torch.testing.assert_close(out, varlen._segmentwise_sdpa(q, k, v, cu, 0.3, causal), atol=1e-6, rtol=1e-5)


# ---- on a GPU: PyTorch's FlashAttention varlen kernel (skipped without CUDA) -------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_varlen_kernel_matches_fp32_reference_forward_and_backward(causal):
    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [37, 130, 5, 64], 8, 2, 64
    cu = torch.tensor([0, 37, 167, 172, 236], dtype=torch.int32, device="cuda")
    q = torch.randn(1, heads, sum(lengths), dim, device="cuda")
    k, v = (torch.randn(1, kv_heads, sum(lengths), dim, device="cuda") for _ in range(2))
    module = types.SimpleNamespace(is_causal=causal, training=True)
    inputs = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out, _ = varlen_attention_forward(module, *inputs, None, scaling=dim**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                      max_length_q=130, max_length_k=130)
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v)]  # fp32: the per-segment SDPA reference
    ref = varlen._segmentwise_sdpa(*(t[0].transpose(0, 1) for t in ref_inputs), cu, dim**-0.5, causal)
    assert out.dtype == torch.bfloat16 and out.shape == (1, sum(lengths), heads, dim)
    torch.testing.assert_close(out[0].float(), ref, atol=2e-2, rtol=2e-2)
    grad = torch.randn_like(ref)
    out[0].float().backward(grad)
    ref.backward(grad)
    for got, want in zip(inputs, ref_inputs):
        torch.testing.assert_close(got.grad.float(), want.grad, atol=5e-2, rtol=5e-2)


@cuda
def test_cuda_packed_model_logits_within_bf16_tolerance_of_padded(tokenizer_dir):
    cfg = tiny_model_config(tokenizer_dir)
    cfg.dtype = "bfloat16"
    sdpa_model, tokenizer = build_model(cfg, device="cuda")
    cfg.attn_implementation = "varlen"
    varlen_model, _ = build_model(cfg, device="cuda")
    varlen_model.audio_encoder.encoder.config._attn_implementation = NAME
    sdpa_model, varlen_model = (m.to("cuda", torch.bfloat16).eval() for m in (sdpa_model, varlen_model))
    examples = _examples(sdpa_model)
    on_cpu = ("audio_lengths", "audio_owner", "image_owner")
    on_cuda = lambda b: {k: v.cuda() if torch.is_tensor(v) and k not in on_cpu else v for k, v in b.items()}
    with torch.no_grad():
        ref = logits_of(sdpa_model, on_cuda(collate_padded(examples, tokenizer.pad_token_id)))
        packed = on_cuda(collate_packed(examples))
        out = logits_of(varlen_model, packed)
    bounds = packed["cu_seqlens"].tolist()
    got = torch.cat([out[0, bounds[b] : bounds[b + 1]] for b in range(len(examples))]).float()
    want = torch.cat([ref[b, : len(e)] for b, e in enumerate(examples)]).float()
    assert float((got - want).norm() / want.norm()) < 1e-2


def test_packed_row_builds_no_square_mask_and_padded_batches_keep_theirs(tokenizer_dir, monkeypatch):
    """A (T, T) mask of a 32k packed row is 1 GB; the varlen kernel never reads it, so none is built."""
    cfg = tiny_model_config(tokenizer_dir)
    cfg.attn_implementation = "varlen"
    model, tokenizer = build_model(cfg)
    masks = {}  # query length -> masks the kernel was handed
    real = varlen.varlen_attention_forward
    monkeypatch.setattr(varlen, "varlen_attention_forward", lambda m, q, k, v, mask, **kw: masks.setdefault(
        q.shape[2], []).append(mask) or real(m, q, k, v, mask, **kw))
    register_varlen_attention()  # the interface now calls the spy
    examples = _examples(model)
    packed, padded = collate_packed(examples), collate_padded(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        model.eval()(**packed)
        model(**padded)
    n_layers = len(model.llm.model.layers)
    assert masks[packed["input_ids"].shape[1]] == [None] * n_layers  # the LLM's layers on the packed row
    padded_masks = masks[padded["input_ids"].shape[1]]
    assert len(padded_masks) == n_layers and all(m is not None and m.dim() == 4 for m in padded_masks)
    monkeypatch.undo()
    register_varlen_attention()
