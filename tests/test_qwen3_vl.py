"""Qwen3-VL (dense and MoE) on the engine: exactness, a hand-written pruned forward with deepstack on the kept
rows, cache and decode positions, FastV against eager attention, ShaRP's reference pass, layouts against the
processor's rules, and a save/load round trip. Tiny random-weight models, no downloads."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

import sharp_vlm as sv
from sharp_vlm.core.layout import VisualItem
from sharp_vlm.engine.segment_attention import RUNS_KWARG
from sharp_vlm.models import registry
from sharp_vlm.models.qwen3_vl import Qwen3VLAdapter, register
from sharp_vlm.models.tiny_qwen3_vl import frame_timestamps, tiny_qwen3_video_inputs, tiny_qwen3_vl

N_VIS = 64  # 4 temporal patches x 4 x 4 merged tokens (8 frames at 16 x 16 px)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    register(registry.register_adapter)
    # one thread: these tiny matmuls are dominated by thread hand-offs on a busy 2-core machine (~30x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense():
    model = tiny_qwen3_vl(layers=4, deepstack=(0, 1, 2))
    return model, tiny_qwen3_video_inputs(model, frames=8, height=16, width=16).as_kwargs()


@pytest.fixture(scope="module")
def moe():
    model = tiny_qwen3_vl(moe=True, layers=4, deepstack=(0, 1, 2), seed=3)
    return model, tiny_qwen3_video_inputs(model, frames=8, height=16, width=16, seed=4).as_kwargs()


@pytest.fixture(params=["dense", "moe"])
def family(request):
    return request.getfixturevalue(request.param)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _greedy(model, inputs, n=6, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# ---------------------------------------------------------------- the oracle: a hand-written pruned forward
def qwen3_prompt(model, inputs) -> dict:
    """What the unpatched Qwen3-VL hands its text model: embeddings, 3-D positions, deepstack inputs."""
    seen = {}

    def grab(mod, args, kwargs):
        seen.update(kwargs)

    h = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    h.remove()
    pos = seen["position_ids"]
    pos = pos[1:] if pos.shape[0] == 4 else pos
    return dict(embeds=seen["inputs_embeds"], pos=pos, vis=seen["visual_pos_masks"][0],
                deepstack=seen["deepstack_visual_embeds"], next_pos=int(pos[:, 0, -1].max()) + 1)


def staged_forward(model, prompt, stages, n_decode):
    """stages: [(layer, kept original positions)]. Layers before a stage run on every row still present; after
    layer i < len(deepstack) the i-th deepstack feature of each *kept* visual row is added to it, as
    Qwen3VLTextModel._deepstack_process does on the full sequence. Returns (logits per step, tokens, cache)."""
    tm = model.model.language_model
    stage_at = dict(stages)
    vis, ds = prompt["vis"], prompt["deepstack"]
    vis_index = torch.cumsum(vis.long(), 0) - 1  # position -> index among the visual tokens
    cache = DynamicCache(config=tm.config)
    with torch.no_grad():
        h = prompt["embeds"]
        cos, sin = tm.rotary_emb(h, prompt["pos"])
        rows = torch.arange(h.shape[1])
        for i, lay in enumerate(tm.layers):
            if i in stage_at:
                keep = ~vis[rows] | torch.isin(rows, stage_at[i])
                h, cos, sin, rows = h[:, keep], cos[:, keep], sin[:, keep], rows[keep]
            h = lay(h, attention_mask=None, position_embeddings=(cos, sin), cache=cache, use_cache=True)
            if i < len(ds):
                v = vis[rows]
                h = h.clone()
                h[0, v] = h[0, v] + ds[i][vis_index[rows[v]]]
        logits = [model.lm_head(tm.norm(h))]
        token = logits[-1][:, -1].argmax(-1)
        tokens = [int(token)]
        for t in range(n_decode - 1):
            h = tm.embed_tokens(token)[:, None]
            cos, sin = tm.rotary_emb(h, torch.full((3, 1, 1), prompt["next_pos"] + t))
            for lay in tm.layers:
                h = lay(h, attention_mask=None, position_embeddings=(cos, sin), cache=cache, use_cache=True)
            logits.append(model.lm_head(tm.norm(h)))
            token = logits[-1][:, -1].argmax(-1)
            tokens.append(int(token))
    return logits, tokens, cache


def test_oracle_without_stages_is_the_model(dense):
    """The oracle's deepstack handling is the model's: no stage reproduces the unpatched logits."""
    model, inputs = dense
    logits, tokens, _ = staged_forward(model, qwen3_prompt(model, inputs), [], n_decode=4)
    assert (logits[0] - _logits(model, inputs)).abs().max() < 1e-5
    assert tokens == _greedy(model, inputs, n=4)[0, -4:].tolist()


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("cfg", [sv.NoPrune(), sv.FastV(retain=1.0, layer=2), sv.UniformPrune(retain=1.0, layer=0),
                                 sv.ShaRP(retain=1.0)], ids=["noprune", "fastv", "uniform0", "sharp"])
def test_keep_everything_equals_unpatched(family, cfg):
    model, inputs = family
    ref, ref_gen = _logits(model, inputs), _greedy(model, inputs)
    with sv.apply(model, cfg) as handle:
        out, gen = _logits(model, inputs), _greedy(model, inputs)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(gen, ref_gen)
    assert handle.last_stats.n_visual == [N_VIS]


METHODS = {
    "fastv1": sv.FastV(retain=0.25, layer=1),
    "fastv2": sv.FastV(retain=0.25, layer=2),
    "fastv3": sv.FastV(retain=0.2, layer=3),  # after the deepstack layers
    "random1": sv.RandomPrune(retain=0.3, layer=1),
    "uniform0": sv.UniformPrune(retain=0.25, layer=0),
    "schedule": sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.FastV(retain=0.25, layer=2)]),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_engine_matches_oracle_at_prefill_and_decode(dense, name):
    model, inputs = dense
    with sv.apply(model, METHODS[name]) as handle, torch.no_grad():
        prefill = model(**inputs).logits
        stats = handle.last_stats.stages
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    stages = [(s.layer, s.kept_positions[0]) for s in stats]
    logits, tokens, _ = staged_forward(model, qwen3_prompt(model, inputs), stages, n_decode=5)
    assert prefill.shape == logits[0].shape
    assert (prefill - logits[0]).abs().max() < 1e-5
    assert out.sequences[0, -5:].tolist() == tokens
    for step, (a, b) in enumerate(zip(out.logits, logits, strict=True)):
        assert (a - b[:, -1]).abs().max() < 1e-4, f"decode step {step}"
    # the deepstack shadow and the reference hooks are gone after the call
    assert "_deepstack_process" not in model.model.language_model.__dict__


def test_oracle_sees_deepstack_on_the_kept_rows(dense):
    """Ignoring deepstack after a stage (or adding it at the wrong rows) would not match the engine."""
    model, inputs = dense
    with sv.apply(model, sv.FastV(retain=0.25, layer=1)) as handle:
        prefill = _logits(model, inputs)
        kept = handle.last_stats.stages[0].kept_positions[0]
    prompt = qwen3_prompt(model, inputs)
    shifted = dict(prompt, deepstack=[torch.roll(d, 1, 0) for d in prompt["deepstack"]])
    wrong, _, _ = staged_forward(model, shifted, [(1, kept)], n_decode=1)
    assert (prefill - wrong[0]).abs().max() > 1e-3


def test_moe_matches_oracle(moe):
    model, inputs = moe
    cfg = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.FastV(retain=0.25, layer=2)])
    with sv.apply(model, cfg) as handle, torch.no_grad():
        prefill = model(**inputs).logits
        stages = [(s.layer, s.kept_positions[0]) for s in handle.last_stats.stages]
        gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    logits, tokens, _ = staged_forward(model, qwen3_prompt(model, inputs), stages, n_decode=4)
    assert (prefill - logits[0]).abs().max() < 1e-5
    assert gen[0, -4:].tolist() == tokens


@pytest.mark.parametrize("trim", [False, True])
def test_kv_cache_lengths_and_decode_positions(dense, trim):
    model, inputs = dense
    seq = inputs["input_ids"].shape[1]
    seen = []
    last = model.model.language_model.layers[-1]
    h = last.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["position_embeddings"][0][:, -1].clone()), with_kwargs=True)
    try:
        _greedy(model, inputs, n=4)
        ref_pos = seen[1:]
        seen.clear()
        with sv.apply(model, sv.FastV(retain=0.25, layer=2), trim_kv=trim):
            out = _greedy(model, inputs, n=4, return_dict_in_generate=True)
        pruned_pos = seen[1:]
    finally:
        h.remove()
    # decode positions (as the RoPE angles the layers get) equal the unpruned model's: the timestamps keep the
    # text after the video above every visual position, so the last prompt token + 1 is M-RoPE's next position
    assert len(ref_pos) == len(pruned_pos) == 3
    for a, b in zip(ref_pos, pruned_pos, strict=True):
        assert torch.equal(a, b)
    lengths = [layer.keys.shape[-2] for layer in out.cache.layers]
    kept = seq - N_VIS + 16
    shallow = kept if trim else seq
    assert lengths == [shallow + 3] * 2 + [kept + 3] * 2


def test_generate_with_and_without_cache_agree(dense):
    model, inputs = dense
    cfg = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.FastV(retain=0.25, layer=1)])
    with sv.apply(model, cfg) as handle:
        cached = _greedy(model, inputs, n=5)
        kept_cached = handle.last_stats.stages[-1].kept[0]
        uncached = _greedy(model, inputs, n=5, use_cache=False)
        kept_uncached = handle.last_stats.stages[-1].kept[0]
    assert torch.equal(cached, uncached)
    assert torch.equal(kept_cached, kept_uncached)


@pytest.mark.parametrize("layer", [1, 2])
def test_fastv_matches_eager_attention_reference(layer):
    sdpa = tiny_qwen3_vl(seed=5)
    eager = tiny_qwen3_vl(seed=5, attn_implementation="eager")
    inputs = tiny_qwen3_video_inputs(sdpa, frames=8, seed=6).as_kwargs()
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions[layer]  # (1, H, S, S), deepstack included
    vis = torch.nonzero(inputs["mm_token_type_ids"][0]).flatten()
    ref = torch.sort(torch.topk(att[0, :, -1, vis].mean(0), round(0.3 * vis.numel())).indices).values
    for model in (sdpa, eager):
        with sv.apply(model, sv.FastV(retain=0.3, layer=layer)) as handle, torch.no_grad():
            model(**inputs)
        assert torch.equal(handle.last_stats.stages[0].kept[0], ref)


def test_remove_restores_model(dense):
    model, inputs = dense
    ref = _logits(model, inputs)
    hooks = _hooks(model)
    with sv.apply(model, sv.ShaRP(retain=0.2, layer=2)):
        assert _logits(model, inputs).shape[1] < ref.shape[1]
    assert _hooks(model) == hooks
    assert "_deepstack_process" not in model.model.language_model.__dict__
    assert torch.equal(_logits(model, inputs), ref)


# ---------------------------------------------------------------- ShaRP and its reference pass
def test_sharp_defaults_reference_pass(dense):
    """ShaRP (defaults: layer 2, segment mask, reference debias): the reference pass gets the real positions and
    masks, black frames at the visual rows, and the black frames' deepstack after layer 0 as the model adds it."""
    model, inputs = dense
    calls, raw0 = [], []
    layers = model.model.language_model.layers
    # registered before the engine's: sees layer 0's own output, before the deepstack addition
    raw_hook = layers[0].register_forward_hook(lambda m, a, out: raw0.append(out))
    with sv.apply(model, sv.ShaRP()) as handle, torch.no_grad():
        hooks = [
            raw_hook,
            layers[0].register_forward_pre_hook(
                lambda m, a, k: calls.append((0, a[0], k["position_embeddings"], k.get(RUNS_KWARG))),
                with_kwargs=True),
            layers[1].register_forward_pre_hook(lambda m, a, k: calls.append((1, a[0], None, None)),
                                                with_kwargs=True),
        ]
        try:
            model(**inputs)
        finally:
            for h in hooks:
                h.remove()
    assert handle.last_stats.stages[0].n_kept == [round(0.1 * N_VIS)]
    (_, real_h, real_pe, real_runs), (_, real_h1, _, _), (_, ref_h, ref_pe, ref_runs), (_, ref_h1, _, _) = calls
    assert real_h.shape == ref_h.shape
    assert torch.equal(real_pe[0], ref_pe[0]) and torch.equal(real_pe[1], ref_pe[1])
    assert real_runs is not None and real_runs == ref_runs
    assert sum(seg for _, _, seg in real_runs.runs) == 4  # one segment per temporal patch, timestamps are text
    vis = inputs["mm_token_type_ids"][0] != 0
    assert torch.equal(real_h[0, ~vis], ref_h[0, ~vis])
    assert not torch.allclose(real_h[0, vis], ref_h[0, vis])
    # black frames: the video's features and its deepstack features, through the model's own vision tower
    vc = model.config.vision_config
    grid = inputs["video_grid_thw"]
    pixels = torch.full((int(grid.prod()), vc.in_channels * vc.temporal_patch_size * vc.patch_size**2), -1.0)
    with torch.no_grad():
        black = model.model.get_video_features(pixels, grid, return_dict=True)
    assert torch.allclose(ref_h[0, vis], torch.cat(black.pooler_output), atol=1e-6)
    expected = raw0[1].clone()
    expected[0, vis] += torch.cat(black.deepstack_features[0])
    assert torch.allclose(ref_h1, expected, atol=1e-6)
    assert (ref_h1 - raw0[1]).abs().max() > 1e-3  # the deepstack addition is not a no-op
    # the real pass got the real deepstack: the model's own features, not the black ones
    real_ds = qwen3_prompt(model, inputs)["deepstack"][0]
    assert torch.allclose(real_h1[0, vis] - raw0[0][0, vis], real_ds, atol=1e-6)


def test_sharp_after_a_layer_zero_stage_runs_on_the_kept_rows(dense):
    """After a layer-0 stage the reference pass runs on the kept rows: black deepstack goes to those rows only."""
    model, inputs = dense
    cfg = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=0.2, layer=2)])
    hooks = _hooks(model)
    layers = model.model.language_model.layers
    into1, raw0 = [], []
    with sv.apply(model, cfg) as handle:
        grab = [layers[0].register_forward_hook(lambda m, a, out: raw0.append(out)),
                layers[1].register_forward_pre_hook(lambda m, a: into1.append(a[0]))]
        try:
            out = _logits(model, inputs)
        finally:
            for h in grab:
                h.remove()
        gen = _greedy(model, inputs, n=3)
    stages = handle.last_stats.stages
    assert [s.n_kept for s in stages] == [[32], [13]]
    assert out.shape[1] == inputs["input_ids"].shape[1] - N_VIS + 13
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    assert _hooks(model) == hooks
    # the reference pass (second call of layer 0): raw output + the black deepstack of the kept visual rows
    vis = inputs["mm_token_type_ids"][0] != 0
    rows = torch.nonzero(~vis | torch.isin(torch.arange(vis.numel()), stages[0].kept_positions[0])).flatten()
    kept_vis = vis[rows]
    assert raw0[1].shape[1] == rows.numel() == into1[1].shape[1]
    vc = model.config.vision_config
    grid = inputs["video_grid_thw"]
    pixels = torch.full((int(grid.prod()), vc.in_channels * vc.temporal_patch_size * vc.patch_size**2), -1.0)
    with torch.no_grad():
        ds0 = torch.cat(model.model.get_video_features(pixels, grid, return_dict=True).deepstack_features[0])
    expected = raw0[1].clone()
    expected[0, kept_vis] += ds0[(torch.cumsum(vis.long(), 0) - 1)[rows[kept_vis]]]
    assert torch.allclose(into1[1], expected, atol=1e-6)


@pytest.mark.parametrize("cfg", [sv.FastV(retain=0.25, layer=1), sv.ShaRP()], ids=["fastv1", "sharp"])
def test_batch_equals_one_by_one(dense, cfg):
    """Deepstack features are listed over the whole batch: each sample's kept rows take their own."""
    model, first = dense
    second = tiny_qwen3_video_inputs(model, frames=8, height=16, width=16, seed=9).as_kwargs()
    second["input_ids"] = first["input_ids"].clone()  # same text, other pixels: equal visual counts
    batch = {k: torch.cat([first[k], second[k]]) for k in first}
    with sv.apply(model, cfg) as handle:
        out = _logits(model, batch)
        kept = handle.last_stats.stages[0].kept
        for b, one in enumerate((first, second)):
            alone = _logits(model, one)
            assert torch.equal(handle.last_stats.stages[0].kept[0], kept[b])
            assert (out[b : b + 1] - alone).abs().max() < 1e-5


# ---------------------------------------------------------------- layouts against the processor's rules
SPECIAL = {"<|vision_start|>": -5, "<|vision_end|>": -6, "<|video_pad|>": -4, "<|image_pad|>": -3}


def _tokens(text: str, vocab: int) -> torch.Tensor:
    """A stand-in tokenizer: the special tokens by id, every other character an ordinary text id."""
    ids = []
    for piece in re.split("(" + "|".join(re.escape(s) for s in SPECIAL) + ")", text):
        if piece in SPECIAL:
            ids.append(vocab + SPECIAL[piece])
        else:
            ids += [3 + ord(c) % (vocab - 11) for c in piece]
    return torch.tensor(ids)


def _processor_video(frames: int, height: int, width: int, fps: float, min_pixels: int, max_pixels: int):
    """(video_grid_thw, placeholder text) as Qwen3-VL's video processor and processor make them."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor, smart_resize
    from transformers.video_utils import VideoMetadata

    vp = Qwen3VLVideoProcessor(patch_size=2, merge_size=2, temporal_patch_size=2)
    h, w = smart_resize(frames, height, width, temporal_factor=2, factor=4, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    # the processor's own frame padding and patchify (resize and normalisation need torchvision; skipped)
    out = vp._preprocess([torch.rand(frames, 3, h, w)], do_resize=False, size=None, resample=None,
                         do_rescale=False, rescale_factor=1.0, do_normalize=False, image_mean=None, image_std=None,
                         patch_size=2, temporal_patch_size=2, merge_size=2, cap_pixels_per_frame=False,
                         return_tensors="pt")
    grid = out["video_grid_thw"]
    fake = SimpleNamespace(
        video_processor=vp, video_token="<|video_pad|>", vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
        _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a),
    )
    meta = VideoMetadata(total_num_frames=frames, fps=fps, frames_indices=list(range(frames)))
    text = Qwen3VLProcessor.replace_video_token(fake, {"video_grid_thw": grid, "video_metadata": [meta]}, 0)
    return grid, (h, w), text, out["pixel_values_videos"]


@pytest.fixture(scope="module")
def layout_model():
    return tiny_qwen3_vl(layers=1, deepstack=(0,))


@pytest.mark.parametrize("frames,height,width", [(4, 16, 16), (7, 24, 40), (10, 18, 50), (2, 64, 16), (16, 8, 8)])
def test_layouts_follow_the_processor(layout_model, frames, height, width):
    model = layout_model
    vocab = model.config.text_config.vocab_size
    grid, (h, w), text, pixels = _processor_video(frames, height, width, fps=2.0, min_pixels=4096,
                                                  max_pixels=6 * 32 * 32)
    t = math.ceil(frames / 2)  # frames padded to whole temporal patches
    assert grid.tolist() == [[t, h // 2, w // 2]]
    assert text.count("seconds>") == t  # one timestamp per temporal patch
    # the tiny factory writes the same timestamps as the processor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    stamps = Qwen3VLProcessor._calculate_timestamps(None, list(range(frames)), 2.0, 2)
    assert frame_timestamps(frames, 2.0, 2) == stamps
    assert re.findall(r"<([0-9.]+) seconds>", text) == [f"{x:.1f}" for x in stamps]
    ids = torch.cat([torch.arange(5, 10), _tokens(text, vocab), torch.arange(20, 24)])[None]
    types = (ids == model.config.video_token_id).long() * 2
    call = dict(input_ids=ids, mm_token_type_ids=types, video_grid_thw=grid, attention_mask=torch.ones_like(ids))
    (lay,) = Qwen3VLAdapter(model).find_layouts(call, ids.shape[1], 1)
    per_block = (h // 4) * (w // 4)
    assert lay.n_visual == t * per_block == pixels.shape[0] // 4
    assert lay.items == [VisualItem("video", 0, t, h // 4, w // 4)]
    assert torch.equal(lay.positions, torch.nonzero(types[0]).flatten())
    # frame id = the vision_start block the token sits in; timestamps and markers are not visual
    block = torch.cumsum((ids[0] == model.config.vision_start_token_id).long(), 0) - 1
    assert torch.equal(lay.frame_ids, block[lay.positions])
    # rows/cols agree with the model's own M-RoPE: (h, w) offsets from the block's temporal position
    pos, _ = model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grid)
    p = pos[:, 0, lay.positions]
    assert torch.equal(p[1] - p[0], lay.rows) and torch.equal(p[2] - p[0], lay.cols)
    assert len(set(p[0].tolist())) == t  # one temporal position per block


def test_layouts_of_several_videos_and_an_image(layout_model):
    model = layout_model
    cfg = model.config
    vocab = cfg.text_config.vocab_size
    g1, _, v1, _ = _processor_video(4, 16, 16, fps=1.0, min_pixels=16, max_pixels=10**6)
    g2, _, v2, _ = _processor_video(6, 8, 16, fps=4.0, min_pixels=16, max_pixels=10**6)
    image = "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>"  # grid (1, 4, 6)
    ids = torch.cat([_tokens("a" + v1 + "b" + image + "c" + v2 + "d", vocab)])
    ids = torch.cat([torch.zeros(3, dtype=torch.long), ids])[None]  # left padding
    types = (ids == cfg.video_token_id).long() * 2 + (ids == cfg.image_token_id).long()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    call = dict(input_ids=ids, mm_token_type_ids=types, video_grid_thw=torch.cat([g1, g2]),
                image_grid_thw=torch.tensor([[1, 4, 6]]), attention_mask=mask)
    (lay,) = Qwen3VLAdapter(model).find_layouts(call, ids.shape[1], 1)
    assert lay.items == [VisualItem("video", 0, 2, 4, 4), VisualItem("image", 32, 1, 2, 3),
                         VisualItem("video", 38, 3, 2, 4)]
    assert lay.n_visual == 32 + 6 + 24 and lay.n_frames == 2 + 1 + 3
    assert lay.of_kinds(("video",)).n_visual == 56
    # grids from another processor call are refused with a clear message
    with pytest.raises(sv.InputError, match="grid"):
        Qwen3VLAdapter(model).find_layouts(dict(call, video_grid_thw=torch.cat([g1, g1])), ids.shape[1], 1)
    with pytest.raises(sv.InputError, match="fewer blocks"):  # the grid claims a third block for video 1
        Qwen3VLAdapter(model).find_layouts(dict(call, video_grid_thw=torch.cat([g1 + torch.tensor([1, 0, 0]), g2])),
                                           ids.shape[1], 1)
    with pytest.raises(sv.InputError, match="mm_token_type_ids"):
        Qwen3VLAdapter(model).find_layouts({"input_ids": ids}, ids.shape[1], 1)


# ---------------------------------------------------------------- save / load
def test_save_load_round_trip_then_apply(dense, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    model, inputs = dense
    model.save_pretrained(tmp_path)
    loaded = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(loaded, inputs), _logits(model, inputs))
    cfg = sv.FastV(retain=0.25, layer=1)
    with sv.apply(model, cfg) as h:
        ref = _logits(model, inputs)
        ref_kept = h.last_stats.stages[0].kept[0]
    with sv.apply(loaded, cfg) as h:
        out = _logits(loaded, inputs)
        assert isinstance(h.adapter, Qwen3VLAdapter)
        assert torch.equal(h.last_stats.stages[0].kept[0], ref_kept)
    assert torch.equal(out, ref)


def test_a_text_model_without_deepstack_inputs_is_refused_at_apply(monkeypatch):
    model = tiny_qwen3_vl(layers=2, deepstack=(0,))

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):  # a release that renamed the deepstack inputs
        raise AssertionError("not called")

    monkeypatch.setattr(type(model.model.language_model), "forward", forward)
    with pytest.raises(sv.UnsupportedModelError, match="deepstack_visual_embeds"):
        sv.apply(model, sv.FastV(retain=0.5, layer=1))
