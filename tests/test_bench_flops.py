"""Analytic FLOP counts against torch's FlopCounterMode on tiny random-weight models."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaOnevisionConfig,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
from transformers.models.internvl.modeling_internvl import InternVLVisionModel
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from sharp_vlm.bench.flop_counter import count_flops, count_flops_by_op
from sharp_vlm.bench.shapes import decoder_config, decoder_shape, list_shapes, vision_config
from sharp_vlm.flops import (
    DecoderShape,
    attention_pairs,
    decode_flops_per_token,
    layer_flops,
    layer_seq_lens,
    method_flops,
    prefill_flops,
    reference_pass_flops,
    scoring_flops,
    stages_to_removals,
    vision_encoder_flops,
)

TINY = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    attn_implementation="sdpa",
)


def _tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()
    if kind == "qwen3":  # head_dim 24 != hidden / heads, so q/o are not square
        return Qwen3ForCausalLM(Qwen3Config(**TINY, head_dim=24)).eval()
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def _pruned_forward(model: torch.nn.Module, ids: torch.Tensor, k: int, keep: torch.Tensor) -> torch.Tensor:
    """Layers < k on the whole sequence, layers >= k on the ``keep`` positions, logits for the last."""
    inner = model.model
    hidden = inner.embed_tokens(ids)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    cos, sin = inner.rotary_emb(hidden, pos)
    for i, layer in enumerate(inner.layers):
        if i == k:
            hidden, pos, cos, sin = hidden[:, keep], pos[:, keep], cos[:, keep], sin[:, keep]
        hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)
    return model.lm_head(inner.norm(hidden)[:, -1:])


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_cpu_sdpa_is_counted(kind: str) -> None:
    model = _tiny(kind)
    ids = torch.randint(0, 300, (1, 40))
    with torch.no_grad():
        by_op = count_flops_by_op(lambda: model(ids, logits_to_keep=1))
    assert by_op.get("aten._scaled_dot_product_flash_attention_for_cpu", 0) > 0


@pytest.mark.parametrize("kind", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("seq_len", [37, 96])
def test_dense_prefill_matches_flop_counter(kind: str, seq_len: int) -> None:
    model = _tiny(kind)
    shape = DecoderShape.from_config(model.config)
    ids = torch.randint(0, 300, (1, seq_len))
    with torch.no_grad():
        measured = count_flops(lambda: model(ids, logits_to_keep=1))
    predicted = prefill_flops(shape, seq_len)["total"]
    assert predicted == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize(("k", "removed"), [(0, 50), (2, 60), (3, 10)])
def test_pruned_prefill_matches_flop_counter(kind: str, k: int, removed: int) -> None:
    model = _tiny(kind)
    shape = DecoderShape.from_config(model.config)
    seq_len = 90
    ids = torch.randint(0, 300, (1, seq_len))
    # Drop a block of "visual" tokens after a short text prefix; which ones does not matter.
    keep = torch.cat([torch.arange(0, 5), torch.arange(5 + removed, seq_len)])
    with torch.no_grad():
        measured = count_flops(lambda: _pruned_forward(model, ids, k, keep))
    predicted = prefill_flops(shape, seq_len, [(k, removed)])
    assert predicted["seq_lens"] == [seq_len] * k + [seq_len - removed] * (4 - k)
    assert predicted["total"] == pytest.approx(measured, rel=0.02)
    assert predicted["total"] < prefill_flops(shape, seq_len)["total"]


def test_decode_step_matches_flop_counter() -> None:
    model = _tiny("qwen2")
    shape = DecoderShape.from_config(model.config)
    ids = torch.randint(0, 300, (1, 50))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        nxt = torch.randint(0, 300, (1, 1))
        measured = count_flops(lambda: model(nxt, cache=out.cache, use_cache=True))
    predicted = decode_flops_per_token(shape, 51)["total"]
    assert predicted == pytest.approx(measured, rel=0.02)


def test_layer_flops_breakdown() -> None:
    shape = DecoderShape(64, 160, 4, 4, 2, 16, 300)
    f = layer_flops(shape, 10, 30)
    assert f["q_proj"] == 2 * 10 * 64 * 64
    assert f["k_proj"] == f["v_proj"] == 2 * 10 * 64 * 32  # GQA: 2 kv heads of 16
    assert f["attn_scores"] == f["attn_values"] == 2 * 4 * 10 * 30 * 16  # full rectangle
    assert f["mlp"] == 6 * 10 * 64 * 160
    assert f["total"] == sum(v for key, v in f.items() if key != "total")


def test_causal_count_keeps_the_pairs_a_causal_kernel_computes() -> None:
    shape = DecoderShape(64, 160, 4, 4, 2, 16, 300)
    # prefill: n(n+1)/2 pairs; 3 new tokens after 7 cached ones: 3 x 7 + (1 + 2 + 3)
    assert attention_pairs(30, 30, causal=True) == 465 and attention_pairs(3, 10, causal=True) == 27
    assert attention_pairs(1, 50, causal=True) == attention_pairs(1, 50) == 50  # a decode step sees every key
    rect, causal = layer_flops(shape, 30, 30), layer_flops(shape, 30, 30, causal=True)
    assert causal["attn_scores"] == 2 * 4 * 465 * 16 and causal["mlp"] == rect["mlp"]
    dense = prefill_flops(shape, 100, causal=True)
    assert dense["attention"] == 4 * 2 * 2 * 4 * (100 * 101 // 2) * 16
    m = method_flops(shape, 100, 80, [(1, 0.25)], causal=True)
    m_rect = method_flops(shape, 100, 80, [(1, 0.25)])
    # the dense prefill loses more to the causal count than the short pruned one: a lower bound
    assert m["dense"] < m_rect["dense"] and m["speedup_bound"] < m_rect["speedup_bound"]
    assert m["pruned_prefill"] == prefill_flops(shape, 100, [(1, 60)], causal=True)["total"]


def test_stage_bookkeeping() -> None:
    assert layer_seq_lens(4, 100, [(1, 30), (3, 20)]) == [100, 70, 70, 50]
    assert layer_seq_lens(4, 100, [(0, 10), (0, 5)]) == [85, 85, 85, 85]
    assert stages_to_removals([(2, 0.5), (5, 10)], 80) == [(2, 40), (5, 30)]
    with pytest.raises(ValueError):
        stages_to_removals([(2, 10), (5, 20)], 80)  # retain grows
    with pytest.raises(ValueError):
        layer_seq_lens(4, 10, [(1, 10)])  # nothing left
    with pytest.raises(ValueError):
        layer_seq_lens(4, 10, [(5, 1)])  # no such layer


def test_scoring_and_reference_pass() -> None:
    shape = decoder_shape("qwen2-7b")
    s = scoring_flops(shape, 1000, 4)
    d, hd = 3584, 128
    assert s["q_proj"] == 2 * 4 * d * 28 * hd
    assert s["k_proj"] == 2 * 1000 * d * 4 * hd
    assert s["scores"] == 2 * 28 * 4 * 1000 * hd
    # Scoring is small next to one layer on the same sequence.
    assert s["total"] < 0.05 * layer_flops(shape, 1000, 1000)["total"]
    ref = reference_pass_flops(shape, 1000, 2, 4)
    assert ref["total"] == 2 * layer_flops(shape, 1000, 1000)["total"] + s["total"]
    assert reference_pass_flops(shape, 1000, 0, 4)["total"] == s["total"]


def test_method_flops_accounting() -> None:
    shape = decoder_shape("qwen2.5-0.5b")
    base = method_flops(shape, 1100, 1000, [(2, 100)], n_query=1, scoring=False)
    scored = method_flops(shape, 1100, 1000, [(2, 100)], n_query=1)
    ref = method_flops(shape, 1100, 1000, [(2, 100)], n_query=1, reference_pass=True)
    assert base["pruned"] == base["pruned_prefill"] == prefill_flops(shape, 1100, [(2, 900)])["total"]
    assert scored["scoring"] == scoring_flops(shape, 1100, 1)["total"]
    assert ref["reference"] == reference_pass_flops(shape, 1100, 2, 1)["total"]
    assert base["reduction"] > scored["reduction"] > ref["reduction"] > 0
    assert ref["speedup_bound"] == pytest.approx(ref["dense"] / ref["pruned"])
    none = method_flops(shape, 1100, 1000, [(0, 1000)], scoring=False)
    assert none["reduction"] == pytest.approx(0.0)


def test_qwen2_7b_video_reduction() -> None:
    # Qwen2-7B decoder, 32 frames x 196 tokens + 100 text tokens, K=2, keep 10%.
    shape = decoder_shape("qwen2-7b")
    assert (shape.num_layers, shape.hidden_size, shape.intermediate_size) == (28, 3584, 18944)
    assert (shape.num_heads, shape.num_kv_heads) == (28, 4)
    n_vis = 32 * 196
    r = method_flops(shape, n_vis + 100, n_vis, [(2, 0.1)], n_query=1)
    assert 0.80 <= r["reduction"] <= 0.85
    assert r["reduction"] == pytest.approx(0.8378, abs=5e-4)
    # An uncached reference pass costs two more dense layers.
    with_ref = method_flops(shape, n_vis + 100, n_vis, [(2, 0.1)], n_query=1, reference_pass=True)
    assert with_ref["reduction"] == pytest.approx(0.7661, abs=5e-4)
    # Earlier pruning on a longer video saves a few points more.
    n_vis = 64 * 196
    r64 = method_flops(shape, n_vis + 100, n_vis, [(1, 0.1)], n_query=1)
    assert 0.02 <= r64["reduction"] - r["reduction"] <= 0.08
    assert r64["reduction"] == pytest.approx(0.8866, abs=5e-4)


@pytest.mark.parametrize(
    "cfg",
    [Qwen2_5_VLConfig(), Qwen2VLConfig(), LlavaOnevisionConfig(), Qwen3Config(head_dim=96)],
    ids=lambda c: type(c).__name__,
)
def test_shape_from_vlm_and_decoder_configs(cfg) -> None:
    shape = DecoderShape.from_config(cfg)
    text = cfg.get_text_config(decoder=True)
    assert shape.hidden_size == text.hidden_size
    assert shape.num_layers == text.num_hidden_layers
    assert shape.num_kv_heads == text.num_key_value_heads
    assert shape.head_dim == (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)


@pytest.mark.parametrize("name", list_shapes())
def test_shape_table_builds_decoder_configs(name: str) -> None:
    cfg = decoder_config(name)
    shape = decoder_shape(name)
    assert DecoderShape.from_config(cfg) == shape
    assert shape.num_heads % shape.num_kv_heads == 0
    assert shape.num_heads * shape.head_dim == shape.hidden_size
    small = decoder_config(name, num_hidden_layers=1)
    assert small.num_hidden_layers == 1 and small.hidden_size == shape.hidden_size


def test_shape_table_vlm_decoders_match_text_models() -> None:
    assert decoder_shape("llava-onevision-7b").hidden_size == decoder_shape("qwen2-7b").hidden_size
    ov = decoder_shape("llava-onevision-0.5b")
    q = decoder_shape("qwen2.5-0.5b")
    assert (ov.num_layers, ov.hidden_size, ov.num_kv_heads) == (q.num_layers, q.hidden_size, q.num_kv_heads)
    smol = decoder_shape("smolvlm2-256m")
    assert (smol.num_layers, smol.hidden_size) == (30, 576)
    assert vision_config("qwen2.5-vl-7b")["out_hidden_size"] == 3584
    assert vision_config("qwen2-7b") is None
    # LLaVA-Video-7B is LLaVA-OneVision-7B fine-tuned: the same decoder and SigLIP tower
    assert decoder_config("llava-video-7b").to_dict() == decoder_config("llava-onevision-7b").to_dict()
    assert vision_config("llava-video-7b") == vision_config("llava-onevision-7b")


@pytest.mark.parametrize(
    ("name", "config_class", "numbers"),
    [
        # (layers, hidden, intermediate, heads, kv heads, head_dim, vocab) from each config.json
        ("qwen3-vl-8b", Qwen3Config, (36, 4096, 12288, 32, 8, 128, 151936)),
        ("llava-next-video-7b", LlamaConfig, (32, 4096, 11008, 32, 32, 128, 32064)),
        ("smolvlm2-2.2b", LlamaConfig, (24, 2048, 8192, 32, 32, 64, 49280)),
        ("internvl3-8b", Qwen2Config, (28, 3584, 18944, 28, 4, 128, 151674)),
    ],
)
def test_new_shapes_build_their_decoder_configs(name: str, config_class: type, numbers: tuple) -> None:
    cfg = decoder_config(name)
    assert type(cfg) is config_class
    shape = DecoderShape.from_config(cfg)
    assert shape == decoder_shape(name)
    got = (shape.num_layers, shape.hidden_size, shape.intermediate_size, shape.num_heads)
    got += (shape.num_kv_heads, shape.head_dim, shape.vocab_size)
    assert got == numbers
    assert shape.tie_word_embeddings is False
    # The decoder-only stand-in is the same shape as the checkpoint's own text model.
    causal_lm = {Qwen3Config: Qwen3ForCausalLM, Qwen2Config: Qwen2ForCausalLM, LlamaConfig: LlamaForCausalLM}
    model = causal_lm[config_class](decoder_config(name, num_hidden_layers=1, vocab_size=300))
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (shape.num_heads * shape.head_dim, shape.hidden_size)
    assert layer.self_attn.k_proj.weight.shape == (shape.num_kv_heads * shape.head_dim, shape.hidden_size)
    assert layer.mlp.up_proj.weight.shape == (shape.intermediate_size, shape.hidden_size)


@pytest.mark.parametrize(
    ("name", "config_class"),
    [("qwen3-vl-8b", Qwen3VLVisionConfig), ("llava-next-video-7b", CLIPVisionConfig),
     ("smolvlm2-2.2b", SiglipVisionConfig), ("internvl3-8b", InternVLVisionConfig)],
)
def test_new_vision_dicts_are_transformers_configs(name: str, config_class: type) -> None:
    vision = vision_config(name)
    cfg = config_class(**{k: v for k, v in vision.items() if k != "model_type"})
    assert cfg.model_type == vision["model_type"]
    for key, value in vision.items():
        got = getattr(cfg, key)
        if isinstance(got, list | tuple) and isinstance(value, int):  # InternVL stores sizes as (h, w)
            assert list(got) == [value, value], key
        else:
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    n = 4 * 24 * 24
    assert vision_encoder_flops(cfg, n) == vision_encoder_flops(vision, n)


@pytest.mark.parametrize("grid", [(2, 8, 12), (1, 10, 6)])
def test_qwen3_vl_vision_matches_flop_counter(grid: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    cfg = Qwen3VLVisionConfig(
        depth=4,
        hidden_size=64,
        intermediate_size=96,
        num_heads=4,
        out_hidden_size=48,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 2],
    )
    cfg._attn_implementation = "sdpa"
    model = Qwen3VLVisionModel(cfg).eval()
    t, h, w = grid
    x = torch.randn(t * h * w, 3 * 2 * 16 * 16)
    with torch.no_grad():
        measured = count_flops(lambda: model(x, grid_thw=torch.tensor([grid])))
    predicted = vision_encoder_flops(cfg, grid_thw=grid)
    assert predicted["total"] == pytest.approx(measured, rel=0.02)
    assert predicted["n_tokens_out"] == t * h * w // 4
    # Two deepstack mergers, each the shape of the final merger; 2-matrix MLP, no windows.
    assert predicted["deepstack"] == 2 * predicted["merger"]
    assert predicted["mlp"] == 4 * 2 * 2 * t * h * w * 64 * 96
    assert predicted["attention"] == 4 * 2 * 2 * 64 * t * (h * w) ** 2
    assert vision_encoder_flops(cfg, t * h * w)["total"] >= predicted["total"]


def test_clip_vision_matches_flop_counter() -> None:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=64, patch_size=16, attn_implementation="sdpa",
    )  # fmt: skip
    model = CLIPVisionModel(cfg).eval()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        measured = count_flops(lambda: model(pixel_values=pixels))
    predicted = vision_encoder_flops(cfg, 3 * 16)
    assert predicted["total"] == pytest.approx(measured, rel=0.02)
    # One class token per image runs through every block: 17 tokens, 17 x 17 attention per image.
    assert predicted["n_tokens"] == 3 * 17 and predicted["n_images"] == 3
    assert predicted["attention"] == 2 * 2 * 2 * 64 * 3 * 17**2
    siglip = vision_encoder_flops({**cfg.to_dict(), "model_type": "siglip_vision_model"}, 3 * 16)
    assert predicted["total"] > siglip["total"]


@pytest.mark.parametrize("grid", [(2, 12, 20), (1, 14, 18)])
def test_qwen2_5_vl_vision_matches_flop_counter(grid: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    cfg = Qwen2_5_VLVisionConfig(
        depth=4,
        hidden_size=64,
        intermediate_size=96,
        num_heads=4,
        out_hidden_size=48,
        window_size=56,  # 2 x 2 merged tokens per window, so the grids above need edge windows
        fullatt_block_indexes=[1, 3],
    )
    cfg._attn_implementation = "sdpa"
    model = Qwen2_5_VisionTransformerPretrainedModel(cfg).eval()
    t, h, w = grid
    x = torch.randn(t * h * w, 3 * 2 * 14 * 14)
    with torch.no_grad():
        measured = count_flops(lambda: model(x, grid_thw=torch.tensor([grid])))
    predicted = vision_encoder_flops(cfg, grid_thw=grid)
    assert predicted["total"] == pytest.approx(measured, rel=0.02)
    assert vision_encoder_flops(cfg, grid_thw=torch.tensor([grid]))["total"] == predicted["total"]
    assert predicted["n_tokens_out"] == t * h * w // 4
    # Without the grid, every full-attention block spans all patches: an upper bound.
    assert vision_encoder_flops(cfg, t * h * w)["total"] >= predicted["total"]


def test_qwen2_vl_vision_matches_flop_counter() -> None:
    torch.manual_seed(0)
    cfg = Qwen2VLVisionConfig(depth=3, embed_dim=64, hidden_size=48, num_heads=4, mlp_ratio=2)
    cfg._attn_implementation = "sdpa"
    model = Qwen2VisionTransformerPretrainedModel(cfg).eval()
    grid = (2, 8, 12)
    x = torch.randn(2 * 8 * 12, 3 * 2 * 14 * 14)
    with torch.no_grad():
        measured = count_flops(lambda: model(x, grid_thw=torch.tensor([grid])))
    assert vision_encoder_flops(cfg, grid_thw=grid)["total"] == pytest.approx(measured, rel=0.02)


def test_siglip_vision_matches_flop_counter() -> None:
    torch.manual_seed(0)
    cfg = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=64, patch_size=16, vision_use_head=False, attn_implementation="sdpa",
    )  # fmt: skip
    model = SiglipVisionModel(cfg).eval()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        measured = count_flops(lambda: model(pixel_values=pixels))
    predicted = vision_encoder_flops(cfg, 3 * 16)
    assert predicted["total"] == pytest.approx(measured, rel=0.02)


def test_real_vision_towers_are_in_a_plausible_range() -> None:
    # Qwen2.5-VL-7B tower on 32 frames at 392 x 392: 16 temporal slices of 28 x 28 patches.
    qwen = vision_encoder_flops(vision_config("qwen2.5-vl-7b"), grid_thw=(16, 28, 28))
    assert qwen["n_tokens_out"] == 16 * 196
    assert 5e12 < qwen["total"] < 5e13
    ov = vision_encoder_flops(vision_config("llava-onevision-7b"), 32 * 729)
    assert ov["n_images"] == 32
    assert 5e12 < ov["total"] < 5e13
    # Qwen3-VL-8B on 32 frames at 384 x 384: 16 temporal slices of 24 x 24 patches of 16 px.
    q3 = vision_encoder_flops(vision_config("qwen3-vl-8b"), grid_thw=(16, 24, 24))
    assert q3["n_tokens_out"] == 16 * 144
    assert 5e12 < q3["total"] < 5e13
    assert q3["deepstack"] == 3 * q3["merger"]
    # LLaVA-NeXT-Video-7B: CLIP ViT-L/14 @336 on 32 frames of 576 patches (+ 1 class token each).
    clip = vision_encoder_flops(vision_config("llava-next-video-7b"), 32 * 576)
    assert clip["n_images"] == 32 and clip["n_tokens"] == 32 * 577
    assert 5e12 < clip["total"] < 5e13
    # SmolVLM2-2.2B: SigLIP-SO400M @384 on 32 frames of 27 x 27 patches (81 tokens each after the shuffle).
    smol = vision_encoder_flops(vision_config("smolvlm2-2.2b"), 32 * 729)
    assert smol["n_images"] == 32 and smol["n_tokens"] == 32 * 729
    assert 5e12 < smol["total"] < 5e13
    # InternVL3-8B: InternViT-300M @448 on 32 frames of 32 x 32 patches (+ 1 class token each; 256 tokens each
    # after the pixel shuffle).
    intern = vision_encoder_flops(vision_config("internvl3-8b"), 32 * 1024)
    assert intern["n_images"] == 32 and intern["n_tokens"] == 32 * 1025
    assert 5e12 < intern["total"] < 5e13


@pytest.mark.parametrize("n_images", [1, 3])
def test_internvit_matches_flop_counter(n_images: int) -> None:
    # InternViT: a class token per image, attention within each image, qkv bias, layer scale, 2-matrix MLP
    torch.manual_seed(0)
    cfg = InternVLVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                               image_size=56, patch_size=14, attention_bias=True)
    cfg._attn_implementation = "sdpa"
    model = InternVLVisionModel(cfg).eval()
    x = torch.randn(n_images, 3, 56, 56)
    with torch.no_grad():
        measured = count_flops(lambda: model(pixel_values=x))
    vision = {"model_type": "internvl_vision", **{k: getattr(cfg, k) for k in (
        "hidden_size", "num_hidden_layers", "intermediate_size", "image_size", "patch_size", "num_channels")}}
    predicted = vision_encoder_flops(vision, n_images * 16)
    assert predicted["n_tokens"] == n_images * 17
    assert predicted["total"] == pytest.approx(measured, rel=0.02)
