"""One case per supported model family for the shared exactness suite (tests/test_adapter_exactness.py).

A case says how to build the family's tiny random-weight model and a prompt with one video, which decoder rows
are that video's prunable tokens (read from the inputs and the model's own features, never from the adapter),
the video's frame grid the adapter must find, and how to batch two prompts where the family batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

import sharp_vlm as sv
from oracle import Prompt, decoder_input, decoder_prompt
from sharp_vlm.testing import (
    tiny_internvl,
    tiny_internvl_inputs,
    tiny_llama,
    tiny_llava_inputs,
    tiny_llava_next_video,
    tiny_llava_onevision,
    tiny_qwen3_video_inputs,
    tiny_qwen3_vl,
    tiny_qwen_vl,
    tiny_smolvlm,
    tiny_smolvlm_inputs,
    tiny_video_inputs,
)
from sharp_vlm.video.processor import batch_kwargs

Inputs = dict[str, Any]
SPAN = sv.VideoSpan(start=6, n_frames=16, tokens_per_frame=8)


@dataclass(frozen=True)
class Case:
    """One family. `build(seed, attn_implementation)` gives a 4-layer model; `inputs(model, seed)` one prompt
    whose video has `frames` frames (temporal patches for Qwen-VL) of `grid` = (rows, cols) tokens; `visual`
    marks that video's rows among the decoder's inputs; `samples` gives two prompts of different lengths with
    equal visual counts (None: the family does not batch)."""

    name: str
    build: Callable[[int, str], nn.Module]
    inputs: Callable[[nn.Module, int], Inputs]
    text_model: Callable[[nn.Module], nn.Module]
    visual: Callable[[nn.Module, Inputs], torch.Tensor]
    frames: int
    grid: tuple[int, int]
    samples: Callable[[nn.Module], list[Inputs]] | None = None
    span: sv.VideoSpan | None = None

    @property
    def n_visual(self) -> int:
        return self.frames * self.grid[0] * self.grid[1]

    @property
    def per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def prompt(self, model: nn.Module, inputs: Inputs) -> Prompt:
        return decoder_prompt(model, self.text_model(model), inputs, self.visual(model, inputs))

    def apply(self, model: nn.Module, method: sv.Method, **kwargs: Any) -> Any:
        return sv.apply(model, method, span=self.span, **kwargs)


def left_pad(samples: list[Inputs]) -> Inputs:
    """A processor-like batch (`VideoProcessor.batch`'s rule): token rows left-padded with id 0; other tensors
    zero-padded at the end of every dimension past the first (LLaVA's image tiles) and joined along the first."""
    return batch_kwargs(samples, pad_id=0)


# ---------------------------------------------------------------- the visual rows, read without the adapter
def _qwen_video(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    return inputs["mm_token_type_ids"][0] == 2  # the processor's type ids: 2 = video


def _llava_video(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """Video placeholders whose decoder input is not the model's `image_newline` embedding."""
    ids = inputs["input_ids"][0]
    prompt = decoder_prompt(model, model.model.language_model, inputs, ids == model.config.video_token_id)
    newline = (prompt.embeds[0] == model.model.image_newline).all(-1)
    return prompt.visual & ~newline


def _internvl_video(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """`<IMG_CONTEXT>` tokens (the inputs hold only the video): never the `<img>` markers or `Frame{k}:` labels."""
    return inputs["input_ids"][0] == model.config.image_token_id


def _smolvlm_video(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """`<image>` placeholders (the inputs hold only the video): never the markers or the frame timestamps."""
    return (inputs["input_ids"][0] == model.config.image_token_id) & inputs["attention_mask"][0].bool()


def _span_video(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    visual = torch.zeros(inputs["input_ids"].shape[1], dtype=torch.bool)
    visual[SPAN.start : SPAN.start + SPAN.n_tokens] = True
    return visual


def _llama_ids(model: nn.Module, seed: int) -> Inputs:
    ids = torch.randint(3, 120, (1, SPAN.start + SPAN.n_tokens + 10), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids}


# ---------------------------------------------------------------- the families
def _qwen(family: str) -> Case:
    return Case(
        family,
        build=lambda seed, attn: tiny_qwen_vl(family, layers=4, seed=seed, attn_implementation=attn),
        inputs=lambda m, seed: tiny_video_inputs(m, frames=16, seed=seed).as_kwargs(),
        text_model=lambda m: m.model.language_model,
        visual=_qwen_video,
        frames=8,  # 16 frames, 2 per temporal patch
        grid=(4, 4),
        samples=lambda m: [tiny_video_inputs(m, frames=16, seed=1, question=7).as_kwargs(),
                           tiny_video_inputs(m, frames=16, seed=2, question=3).as_kwargs()],
    )


def _qwen3(moe: bool) -> Case:
    return Case(
        "qwen3_vl_moe" if moe else "qwen3_vl",
        build=lambda seed, attn: tiny_qwen3_vl(moe=moe, layers=4, deepstack=(0, 1, 2), seed=seed,
                                               attn_implementation=attn),
        inputs=lambda m, seed: tiny_qwen3_video_inputs(m, frames=8, seed=seed).as_kwargs(),
        text_model=lambda m: m.model.language_model,
        visual=_qwen_video,
        frames=4,
        grid=(4, 4),
        samples=lambda m: [tiny_qwen3_video_inputs(m, frames=8, seed=1, question=7).as_kwargs(),
                           tiny_qwen3_video_inputs(m, frames=8, seed=2, question=3).as_kwargs()],
    )


def _llava(name: str, build: Callable[..., nn.Module]) -> Case:
    return Case(
        name,
        build=lambda seed, attn: build(seed=seed, attn_implementation=attn),
        inputs=lambda m, seed: tiny_llava_inputs(m, frames=8, seed=seed),
        text_model=lambda m: m.model.language_model,
        visual=_llava_video,
        frames=8,
        grid=(4, 4),
        # images of different sizes (token counts, grids, tile counts) before same-size videos
        samples=lambda m: [tiny_llava_inputs(m, frames=8, image_sizes=((20, 40),), seed=1, question=7),
                           tiny_llava_inputs(m, frames=8, image_sizes=((40, 36),), seed=2, question=3)],
    )


def _internvl(text: str) -> Case:
    return Case(
        f"internvl_{text}",
        build=lambda seed, attn: tiny_internvl(text, seed=seed, attn_implementation=attn),
        inputs=lambda m, seed: tiny_internvl_inputs(m, seed=seed),
        text_model=lambda m: m.model.language_model,
        visual=_internvl_video,
        frames=8,
        grid=(4, 4),
        samples=lambda m: [tiny_internvl_inputs(m, prefix=5, seed=1), tiny_internvl_inputs(m, prefix=9, seed=2)],
    )


CASES = [
    _qwen("qwen2_vl"),
    _qwen("qwen2_5_vl"),
    _qwen3(moe=False),
    _qwen3(moe=True),
    _llava("llava_onevision", tiny_llava_onevision),
    _llava("llava_next_video", tiny_llava_next_video),
    _internvl("qwen2"),  # InternVL3
    _internvl("qwen3"),  # InternVL3.5
    Case(
        "smolvlm2",
        build=lambda seed, attn: tiny_smolvlm(seed=seed, attn_implementation=attn),
        inputs=lambda m, seed: tiny_smolvlm_inputs(m, frames=8, seed=seed),
        text_model=lambda m: m.model.text_model,
        visual=_smolvlm_video,
        frames=8,
        grid=(4, 4),
        samples=lambda m: [tiny_smolvlm_inputs(m, frames=8, seed=1, question="Who?"),
                           tiny_smolvlm_inputs(m, frames=8, seed=2, question="What is on the table at the end?")],
    ),
    Case(
        "llama_span",  # a decoder-only LM with a declared sv.VideoSpan
        build=lambda seed, attn: tiny_llama(seed=seed, attn_implementation=attn),
        inputs=_llama_ids,
        text_model=lambda m: m.model,
        visual=_span_video,
        frames=SPAN.n_frames,
        grid=(1, SPAN.tokens_per_frame),
        span=SPAN,
    ),
]
BY_NAME = {c.name: c for c in CASES}


@cache
def model_and_inputs(name: str) -> tuple[nn.Module, Inputs]:
    """The case's model (seed 0, SDPA) and prompt (seed 0), built once per test session."""
    case = BY_NAME[name]
    model = case.build(0, "sdpa")
    return model, case.inputs(model, 0)


# ---------------------------------------------------------------- checks shared with the family files
def assert_batch_equals_one_by_one(case: Case, model: nn.Module, samples: list[Inputs], method: sv.Method,
                                   n: int = 4) -> None:
    """A left-padded batch of `samples` generates what each sample generates alone (logits, tokens, kept sets)."""
    batch = left_pad(samples)
    gen = dict(max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with case.apply(model, method) as handle, torch.no_grad():
        singles, kept = [], []
        for x in samples:
            singles.append(model.generate(**x, **gen))
            kept.append([s.kept[0] for s in handle.last_stats.stages])
        both = model.generate(**batch, **gen)
        kept_both = [[s.kept[b] for s in handle.last_stats.stages] for b in range(len(samples))]
    for b, single in enumerate(singles):
        assert both.sequences[b, -n:].tolist() == single.sequences[0, -n:].tolist()
        for step, (lb, ls) in enumerate(zip(both.logits, single.logits, strict=True)):
            assert (lb[b] - ls[0]).abs().max() < 1e-4, f"sample {b} step {step}"
        for kb, ks in zip(kept_both[b], kept[b], strict=True):
            assert torch.equal(kb, ks)


def assert_fastv_matches_eager(case: Case, sdpa: nn.Module, eager: nn.Module, inputs: Inputs, layer: int) -> None:
    """FastV's kept set, under SDPA and under eager attention, equals the top tokens of the eager model's own
    attention weights (the last prompt row, averaged over heads): those of layer K-1 by default (the authors'
    rule), those of layer K with attention_layer="stage"."""
    for a, b in zip(sdpa.state_dict().values(), eager.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions  # per layer (1, H, S, S)
    vis = torch.nonzero(case.visual(sdpa, inputs)).flatten()
    for rule, source in (("previous", layer - 1), ("stage", layer)):
        scores = att[source][0, :, -1, vis].mean(0)
        ref = torch.sort(torch.topk(scores, sv.keep_count(0.3, vis.numel())).indices).values
        for model in (sdpa, eager):
            with case.apply(model, sv.FastV(retain=0.3, layer=layer, attention_layer=rule)) as handle, \
                    torch.no_grad():
                model(**inputs)
            assert torch.equal(handle.last_stats.stages[0].kept[0], ref), (rule, model.config._attn_implementation)


def assert_inputs_embeds_only_is_refused(model: nn.Module, inputs: Inputs) -> None:
    """Without `input_ids` the placeholders cannot be found: a clear InputError, not a silent unpruned call."""
    with torch.no_grad():
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
    with sv.apply(model, sv.FastV()), torch.no_grad(), pytest.raises(sv.InputError, match="needs `input_ids`"):
        model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])


def reference_of(adapter: Any, model: nn.Module, text_model: nn.Module,
                 inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(the adapter's reference input, the visual rows of its layout) for one prompt; every other row must be the
    decoder input's own."""
    embeds = decoder_input(model, text_model, inputs)
    (lay,) = adapter.find_layouts(inputs, embeds.shape[1], 1)
    ref = adapter.reference_embeds(embeds, [lay], inputs)
    vis = torch.zeros(embeds.shape[1], dtype=torch.bool)
    vis[lay.positions] = True
    assert torch.equal(ref[0, ~vis], embeds[0, ~vis])  # text, markers, labels and newlines untouched
    return ref, vis
