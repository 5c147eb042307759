"""What is InternVL's own on the engine (the shared exactness suite, on the Qwen2 and Qwen3 decoders, is
tests/test_adapter_exactness.py): layouts against the model's own features and the processor's token rules, images
beside the video against a hand-written pruned forward, FastV on the LLaMA decoder, the reference input under each
processor's normalisation, save/load, and what is refused. Tiny random-weight models, no downloads.

The oracle defines the prunable rows independently of the adapter: the `<IMG_CONTEXT>` tokens of the video (the
factory writes the images, then the video), never the `<img>` / `</img>` markers or the `Frame{k}: ` labels.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import sharp_vlm as sv
from cases import (
    BY_NAME,
    assert_fastv_matches_eager,
    assert_inputs_embeds_only_is_refused,
    model_and_inputs,
    reference_of,
)
from oracle import check_against_oracle, forward_logits
from oracle import decoder_input as oracle_decoder_input
from sharp_vlm.core.layout import VisualItem
from sharp_vlm.models import registry
from sharp_vlm.models.internvl import InternVLAdapter
from sharp_vlm.models.pixel_norms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from sharp_vlm.testing.internvl import CharTokenizer, image_tiles, tiny_internvl, tiny_internvl_inputs

PER_FRAME = 16  # 16 px tiles, 2 px patches: 8 x 8 patches shuffled to 4 x 4
N_VIDEO = 8 * PER_FRAME
IMAGE = ("image", (20, 40))  # a 2 x 1 canvas: 2 crops + the thumbnail = 3 tiles
N_IMAGE = 3 * PER_FRAME


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qwen2():
    """The shared suite's InternVL3 case: a Qwen2 decoder of 4 layers, an 8-frame video."""
    return model_and_inputs("internvl_qwen2")


@pytest.fixture(scope="module")
def mixed():
    """A 3-tile image, then an 8-frame video."""
    model = tiny_internvl("qwen2", seed=1)
    return model, tiny_internvl_inputs(model, (IMAGE, ("video", 8)), seed=2)


# ---------------------------------------------------------------- the oracle
def decoder_input(model, inputs) -> torch.Tensor:
    return oracle_decoder_input(model, model.model.language_model, inputs)


def prunable(model, inputs, skip: int = 0) -> torch.Tensor:
    """(S,) bool: the context tokens, less the first `skip` of them (the images before the video)."""
    ctx = inputs["input_ids"][0] == model.config.image_token_id
    ctx[torch.nonzero(ctx).flatten()[:skip]] = False
    return ctx


def _check_against_oracle(model, inputs, method, skip=0):
    return check_against_oracle(model, model.model.language_model, inputs, method, prunable(model, inputs, skip))


def test_image_and_video(mixed):
    model, inputs = mixed
    with sv.apply(model, sv.FastV(retain=0.25, layer=2)) as handle, torch.no_grad():
        model(**inputs)
    assert handle.last_stats.n_visual == [N_VIDEO]  # targets="video" by default: the image stays whole
    kept = handle.last_stats.stages[0].kept_positions[0]
    assert bool(prunable(model, inputs, skip=N_IMAGE)[kept].all())
    _check_against_oracle(model, inputs, sv.FastV(retain=0.25, layer=2), skip=N_IMAGE)
    stats = _check_against_oracle(model, inputs, sv.FastV(retain=0.25, layer=2, targets="all"))
    assert stats.n_visual == [N_VIDEO + N_IMAGE]


def test_fastv_matches_eager_attention_reference_on_the_llama_decoder():
    """The suite runs the Qwen2 and Qwen3 decoders; InternVL2.5/3 also ship LLaMA ones."""
    case = BY_NAME["internvl_qwen2"]
    sdpa, eager = tiny_internvl("llama", seed=5), tiny_internvl("llama", seed=5, attn_implementation="eager")
    assert_fastv_matches_eager(case, sdpa, eager, tiny_internvl_inputs(sdpa, seed=6), layer=2)


def _black(shape, mean, std) -> torch.Tensor:
    return torch.tensor([-m / s for m, s in zip(mean, std, strict=True)])[:, None, None].expand(shape).contiguous()


def test_reference_is_black_pixels_through_the_model(qwen2):
    """Without use_processor: frames black under the ImageNet statistics (InternVL3's video processor)."""
    model, inputs = qwen2
    ref, vis = reference_of(InternVLAdapter(model), model, model.model.language_model, inputs)
    assert torch.equal(vis, prunable(model, inputs))
    frames = ref[0, vis].view(8, PER_FRAME, -1)
    assert not torch.allclose(frames[0], frames[0, :1].expand_as(frames[0]))  # the tower's, not a constant
    black = _black(inputs["pixel_values"].shape, IMAGENET_MEAN, IMAGENET_STD)
    expect = decoder_input(model, dict(inputs, pixel_values=black))
    assert (ref[0, vis] - expect[0, vis]).abs().max() < 1e-5  # as if black pixels had been fed to the model


def test_reference_normalises_each_kind_with_its_processor(mixed):
    """use_processor: image tiles black under the image processor's statistics, frames under the video one's."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    model, inputs = mixed
    adapter = InternVLAdapter(model)
    images = GotOcr2ImageProcessorPil()  # the class defaults: OpenAI CLIP statistics
    assert tuple(images.image_mean) == CLIP_MEAN
    adapter.use_processor(SimpleNamespace(image_processor=images,
                                          video_processor=SimpleNamespace(image_mean=IMAGENET_MEAN,
                                                                          image_std=IMAGENET_STD)))
    ref, vis = reference_of(adapter, model, model.model.language_model, inputs)
    shape = inputs["pixel_values"].shape
    pix = torch.cat([_black((3, *shape[1:]), CLIP_MEAN, CLIP_STD),
                     _black((8, *shape[1:]), IMAGENET_MEAN, IMAGENET_STD)])
    expect = decoder_input(model, dict(inputs, pixel_values=pix))
    assert (ref[0, vis] - expect[0, vis]).abs().max() < 1e-5
    pos = torch.nonzero(vis).flatten()
    assert not torch.allclose(ref[0, pos[0]], ref[0, pos[N_IMAGE]])


# ---------------------------------------------------------------- layouts
def _shuffle_sources(model, p: int) -> torch.Tensor:
    """(side*side, k, 2): the (row, col) of the patches the model's own pixel_shuffle packs into each token."""
    coords = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"), -1).float()[None]
    out = model.model.pixel_shuffle(coords, scale_factor=model.config.downsample_ratio)
    return out.reshape(-1, out.shape[-1] // 2, 2).long()


@pytest.mark.parametrize("content", [(("video", 8),), (("video", 1),), (IMAGE, ("video", 3)),
                                     (("video", 5), ("image", (40, 20)), ("image", (16, 64))),
                                     (("image", (33, 70)),)], ids=["v8", "v1", "iv", "vii", "i"])
def test_layout_places_every_feature_where_the_model_puts_it(mixed, content):
    model, _ = mixed
    inputs = tiny_internvl_inputs(model, content, seed=3)
    adapter = registry.adapter_for(model)
    (lay,) = adapter.find_layouts(inputs, inputs["input_ids"].shape[1], 1)
    ctx = inputs["input_ids"][0] == model.config.image_token_id
    assert torch.equal(lay.positions, torch.nonzero(ctx).flatten())  # markers and labels are not visual
    embeds = decoder_input(model, inputs)[0]
    with torch.no_grad():
        feats = model.model.get_image_features(inputs["pixel_values"], return_dict=True).pooler_output
    tiles = feats.shape[0]
    assert (embeds[lay.positions] - feats.flatten(0, 1)).abs().max() < 1e-6  # the tiles in order
    # each tile is one frame of the layout, its tokens the shuffled grid, row-major
    assert torch.equal(lay.frame_ids, torch.arange(tiles).repeat_interleave(PER_FRAME))
    src = _shuffle_sources(model, 8)  # (16, 4, 2)
    assert torch.equal(src[..., 0] // 2, lay.rows[:PER_FRAME, None].expand(-1, 4))
    assert torch.equal(src[..., 1] // 2, lay.cols[:PER_FRAME, None].expand(-1, 4))
    assert torch.equal(lay.rows.view(tiles, -1), lay.rows[:PER_FRAME].expand(tiles, -1))
    # one item per image (t = its tiles) and per video (t = frames); a one-frame video is an image by adjacency
    expected = []
    for kind, arg in content:
        if kind == "video" and arg >= adapter.min_video_frames:
            expected.append(("video", arg))
        else:
            expected.append(("image", 1 if kind == "video" else image_tiles(*arg, 16)))
    assert [(it.kind, it.t) for it in lay.items] == expected
    assert all((it.h, it.w) == (4, 4) for it in lay.items)


def _processor_text(content, seq_len: int, num_patches: list[int]) -> str:
    """The prompt text InternVLProcessor writes: the chat template's `<image>\\n` / `<video>\\n`, each replaced by
    the processor's own `replace_image_token` / `replace_video_token`."""
    from transformers.models.internvl.processing_internvl import InternVLProcessor as P

    ns = SimpleNamespace(start_image_token="<img>", end_image_token="</img>", image_token="<IMG_CONTEXT>",
                         image_seq_length=seq_len)
    videos = {"pixel_values_videos": [np.zeros((arg, 3, 1, 1)) for kind, arg in content if kind == "video"]}
    images = {"num_patches": num_patches}
    text = "<|im_start|>user\n" + "".join(f"<{kind}>\n" for kind, _ in content) + "What happens?<|im_end|>\n"
    counter = {"image": 0, "video": 0}

    def replace(m: re.Match) -> str:
        kind = m.group(1)
        i = counter[kind]
        counter[kind] += 1
        return P.replace_video_token(ns, videos, i) if kind == "video" else P.replace_image_token(ns, images, i)

    return re.sub("<(image|video)>", replace, text)


def _real_geometry():
    """InternVLConfig defaults: 448 px tiles, 14 px patches, pixel shuffle 0.5: 16 x 16 = 256 tokens per tile."""
    from transformers import InternVLConfig

    cfg = InternVLConfig()
    assert cfg.image_seq_length == 256
    return SimpleNamespace(config=cfg), CharTokenizer(cfg.text_config.vocab_size, cfg.image_token_id)


LAYOUT_CASES = [
    ((("video", 1),), "labels"),  # by adjacency a lone one-tile block is an image
    ((("video", 8),), None),
    ((("video", 32),), None),
    ((("image", (1080, 1920)), ("video", 16)), None),
    ((("video", 12), ("image", (300, 2000))), None),
    ((("image", (480, 640)), ("image", (2000, 300)), ("video", 4)), None),
    ((("image", (100, 100)), ("video", 8)), "labels"),  # a one-tile image right before the video
    ((("video", 6), ("video", 3)), "labels"),  # two videos one after the other
    ((("image", (448, 448)), ("video", 1), ("image", (899, 901))), "labels"),
]


@pytest.mark.parametrize(("content", "mode"), LAYOUT_CASES)
def test_layouts_follow_the_processor_rules(content, mode):
    """Token counts from the processor's own code (GotOcr2 tiling, replace_image_token / replace_video_token)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    model, tok = _real_geometry()
    images = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448})
    kwargs = {"crop_to_patches": True}  # InternVLProcessor.images_kwargs
    patches = [images.get_number_of_image_patches(*arg, kwargs) for kind, arg in content if kind == "image"]
    text = _processor_text(content, 256, patches)
    ids = torch.tensor(tok.encode(text))[None]
    adapter = InternVLAdapter(model)
    if mode == "labels":
        adapter.use_processor(SimpleNamespace(tokenizer=tok))
    (lay,) = adapter.find_layouts({"input_ids": ids}, ids.shape[1], 1)
    assert torch.equal(lay.positions, torch.nonzero(ids[0] == tok.context_image_token_id).flatten())
    n_patches = iter(patches)
    expected, start = [], 0
    for kind, arg in content:
        t = arg if kind == "video" else next(n_patches)
        expected.append(VisualItem(kind, start, t, 16, 16))
        start += t * 256
    assert lay.items == expected
    assert lay.n_visual == start and lay.n_frames == sum(it.t for it in expected)
    assert mode == "labels" or all(p > 1 for p in patches)  # by adjacency only where images are multi-tile


def test_adjacency_limits_and_labels():
    """Without labels a one-tile image next to a video joins it and two adjacent videos merge; with the
    processor's labels both are told apart. A long text gap ends a video."""
    model, tok = _real_geometry()
    content = (("image", (100, 100)), ("video", 4), ("video", 2))
    text = _processor_text(content, 256, [1])
    ids = torch.tensor(tok.encode(text))[None]
    adapter = InternVLAdapter(model)
    (lay,) = adapter.find_layouts({"input_ids": ids}, ids.shape[1], 1)
    assert [(it.kind, it.t) for it in lay.items] == [("video", 7)]
    adapter.use_processor(SimpleNamespace(tokenizer=tok))
    (lay,) = adapter.find_layouts({"input_ids": ids}, ids.shape[1], 1)
    assert [(it.kind, it.t) for it in lay.items] == [("image", 1), ("video", 4), ("video", 2)]
    adapter.use_frame_labels(None)
    text = text.replace("Frame3: ", "a much longer text between two frames: ")
    ids = torch.tensor(tok.encode(text))[None]
    (lay,) = adapter.find_layouts({"input_ids": ids}, ids.shape[1], 1)
    assert [(it.kind, it.t) for it in lay.items] == [("video", 3), ("video", 4)]


def test_processor_tiles_run_through_the_tiny_model(mixed):
    """The GotOcr2 processor's own crops + thumbnail at the tiny tile size fill the prompt its rule predicts."""
    from PIL import Image
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    model, _ = mixed
    proc = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=True)
    rng = np.random.default_rng(0)
    for h, w in [(20, 40), (40, 20), (16, 16), (30, 90), (64, 48)]:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out = proc(images=[img], return_tensors="pt")
        n = int(out["num_patches"][0])
        assert n == image_tiles(h, w, 16) == out["pixel_values"].shape[0]
        text = _processor_text((("image", (h, w)),), PER_FRAME, [n])
        ids = torch.tensor(CharTokenizer.of(model).encode(text))[None]
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": out["pixel_values"]}
        (lay,) = registry.adapter_for(model).find_layouts(inputs, ids.shape[1], 1)
        assert [(it.kind, it.t) for it in lay.items] == [("image", n)]
        forward_logits(model, inputs)  # the model's own check: features fill the placeholders exactly


# ---------------------------------------------------------------- errors, registry
def test_inputs_embeds_only_is_refused(qwen2):
    assert_inputs_embeds_only_is_refused(*qwen2)


def test_a_block_that_is_not_whole_tiles_is_refused(qwen2):
    model, inputs = qwen2
    ids = inputs["input_ids"].clone()
    ids[0, torch.nonzero(ids[0] == model.config.image_token_id).flatten()[3]] = 5
    with pytest.raises(sv.InputError, match="whole number of tiles"):
        registry.adapter_for(model).find_layouts(dict(inputs, input_ids=ids), ids.shape[1], 1)


def test_gpt_oss_decoder_is_refused_at_apply():
    model = tiny_internvl("gpt_oss", layers=2, attn_implementation="eager")
    with pytest.raises(sv.UnsupportedModelError, match="attention sinks"):
        sv.apply(model, sv.FastV(retain=0.5, layer=1))


def test_registered():
    assert any(n.startswith("InternVLForConditionalGeneration") for n in registry.supported())


def test_user_runs_videoqa_on_a_one_frame_internvl_video(tmp_path):
    """`VideoQA` (and so `sharp run`) builds a video prompt: its one frame is one `<img>` block, which alone reads
    as a one-tile image; the pipeline declares the prompt a video, so methods that prune videos run on it."""
    from sharp_vlm.pipeline import VideoQA
    from sharp_vlm.testing import save_tiny_checkpoint
    from sharp_vlm.video.decode import write_video

    qa = VideoQA.from_pretrained(save_tiny_checkpoint("internvl", tmp_path / "ckpt", layers=2), dtype="float32")
    pixels = torch.randint(0, 256, (3, 40, 56, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    clip = write_video(tmp_path / "clip.mp4", pixels, fps=8)
    for method in ("sharp", "fastv"):
        ans = qa.answer(clip, "What is shown?", frames=1, method=method, retain=0.25, layer=1, max_new_tokens=2)
        assert ans.inputs.frames.shape[0] == 1 and ans.n_visual == PER_FRAME
        assert ans.n_kept == round(0.25 * PER_FRAME) == ans.kept.numel()
        assert ans.stats.stages[0].n_in[0] == PER_FRAME
    # the declaration is what tells the frame from an image: an adapter without it reads a one-tile image
    call = dict(ans.inputs.kwargs)
    adapter = InternVLAdapter(qa.model)
    (lay,) = adapter.find_layouts(call, call["input_ids"].shape[1], 1)
    assert [(it.kind, it.t) for it in lay.items] == [("image", 1)]
    adapter.declare_video_prompt()
    (lay,) = adapter.find_layouts(call, call["input_ids"].shape[1], 1)
    assert [(it.kind, it.t) for it in lay.items] == [("video", 1)]
