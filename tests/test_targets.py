"""Images beside a video: `targets=` says which visual tokens a method prunes and budgets, for every method."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.testing import tiny_video_inputs


@pytest.fixture(scope="module")
def image_and_video(qwen25):
    """One 16 x 16 px image (16 tokens) then a 16-frame video (128 tokens) in one prompt."""
    model, _ = qwen25
    cfg = model.config
    vc = cfg.vision_config
    video = tiny_video_inputs(model, frames=16, height=16, width=16, prefix=3, question=5, seed=2)
    gen = torch.Generator().manual_seed(3)
    img_tokens = torch.full((16,), cfg.image_token_id)
    image_block = torch.cat([torch.tensor([cfg.vision_start_token_id]), img_tokens,
                             torch.tensor([cfg.vision_end_token_id])])
    ids = torch.cat([video.input_ids[0, :3], image_block, video.input_ids[0, 3:]])[None]
    types = torch.zeros_like(ids)
    types[ids == cfg.image_token_id] = 1
    types[ids == cfg.video_token_id] = 2
    per_patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    inputs = dict(
        input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
        pixel_values=torch.randn(64, per_patch, generator=gen), image_grid_thw=torch.tensor([[1, 8, 8]]),
        pixel_values_videos=video.pixel_values_videos, video_grid_thw=video.video_grid_thw,
    )
    return model, inputs


@pytest.mark.parametrize("method", [sv.UniformPrune(retain=0.5, layer=0), sv.FastV(retain=0.5, layer=2),
                                    sv.ShaRP(retain=0.5, layer=2), sv.RandomPrune(retain=0.5, layer=1)])
def test_video_is_the_default_target_and_images_stay_whole(image_and_video, method):
    model, inputs = image_and_video
    image_pos = torch.nonzero(inputs["mm_token_type_ids"][0] == 1).flatten()
    video_pos = torch.nonzero(inputs["mm_token_type_ids"][0] == 2).flatten()
    with sv.apply(model, method) as h, torch.no_grad():
        out = model(**inputs)
    st = h.last_stats
    assert st.n_visual == [128] and st.stages[0].n_kept == [64]
    assert torch.isin(st.stages[0].kept_positions[0], video_pos).all()
    # every image token is still in the sequence: logits of the kept rows
    assert out.logits.shape[1] == inputs["input_ids"].shape[1] - 64
    assert image_pos.numel() == 16


def test_all_targets_one_budget_over_images_and_frames(image_and_video):
    model, inputs = image_and_video
    with sv.apply(model, sv.UniformPrune(retain=0.5, layer=0, targets="all")) as h, torch.no_grad():
        model(**inputs)
    stage = h.last_stats.stages[0]
    assert h.last_stats.n_visual == [144] and stage.n_kept == [72]
    image_pos = torch.nonzero(inputs["mm_token_type_ids"][0] == 1).flatten()
    # the image is one frame among nine: it gets its per-frame share of the budget
    assert int(torch.isin(stage.kept_positions[0], image_pos).sum()) == 8


def test_image_target_prunes_only_the_image(image_and_video):
    model, inputs = image_and_video
    with sv.apply(model, sv.FastV(retain=0.25, layer=2, targets="image")) as h, torch.no_grad():
        model(**inputs)
    image_pos = torch.nonzero(inputs["mm_token_type_ids"][0] == 1).flatten()
    assert h.last_stats.n_visual == [16] and h.last_stats.stages[0].n_kept == [4]
    assert torch.isin(h.last_stats.stages[0].kept_positions[0], image_pos).all()


def test_a_target_missing_from_the_prompt_is_a_clear_error(qwen25):
    model, inputs = qwen25
    with (sv.apply(model, sv.FastV(targets="image")), torch.no_grad(),
          pytest.raises(sv.InputError, match="targets='image'")):
        model(**inputs)
    with pytest.raises(sv.ConfigError, match="targets='frames' is not one of"):
        sv.FastV(targets="frames")
    with pytest.raises(sv.ConfigError, match="same targets"):
        sv.Schedule([sv.UniformPrune(retain=0.5, layer=0, targets="all"), sv.FastV(retain=0.2, layer=2)])


def test_the_text_query_starts_after_every_visual_token(image_and_video):
    """query="text" is the text after the last visual token of any kind, whatever the stage prunes."""
    from sharp_vlm.engine.rows import PrefillRows

    model, inputs = image_and_video
    types = inputs["mm_token_type_ids"][0]
    seq = types.numel()
    for targets in ("image", "video", "all"):
        with sv.apply(model, sv.FastV(retain=0.5, layer=2, query="text", targets=targets)) as h, torch.no_grad():
            model(**inputs)
        assert h.last_stats.stages[0].n_kept[0] == sv.keep_count(0.5, h.last_stats.n_visual[0])
    lay = h.adapter.find_layouts(inputs, seq, 1)[0]
    image_only = lay.of_kinds(("image",))
    assert [it.kind for it in image_only.items] == ["image"] and image_only.items[0].start == 0
    rows = PrefillRows.start([image_only], torch.ones(1, seq, dtype=torch.bool), torch.tensor([seq - 1]))
    last_visual = int(torch.nonzero(types).max())
    assert int(rows.query_rows("text", [lay])[0].min()) > last_visual
