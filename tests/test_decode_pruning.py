"""Attention pruning while decoding (DyCoke's DP through the engine's `DecodePruning`): equal to a hand-written
decode loop on eager attention, in which layer L-1's own attention weights choose the visual keys that layers >= L
attend to at each step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sharp_vlm as sv
from cases import BY_NAME, assert_batch_equals_one_by_one
from oracle import _decode_pos

N_DECODE = 5


def _eager(name):
    case = BY_NAME[name]
    model = case.build(3, "eager")
    return case, model, case.inputs(model, 4)


def _hand_written(case, model, inputs, layer, retain, similarity):
    """(logits per step, tokens, visual keys attended per step) of the unpatched eager model, decoding with the
    keys hidden by hand."""
    tm = case.text_model(model)
    prompt = case.prompt(model, inputs)
    visual = torch.nonzero(prompt.visual).flatten()
    weights = {}
    hook = tm.layers[layer - 1].self_attn.register_forward_hook(lambda m, a, out: weights.__setitem__("w", out[1]))
    try:
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            cache = out.past_key_values
            logits, tokens, kept = [out.logits[:, -1:]], [], []
            previous = None
            for t in range(N_DECODE - 1):
                token = logits[-1][:, -1].argmax(-1)
                tokens.append(int(token))
                h = tm.embed_tokens(token)[:, None]
                cos, sin = tm.rotary_emb(h, _decode_pos(prompt, prompt.next_pos + t))
                mask = None
                for i, lay in enumerate(tm.layers):
                    h = lay(h, attention_mask=mask if i >= layer else None, position_embeddings=(cos, sin),
                            cache=cache, use_cache=True)
                    if i == layer - 1:
                        scores = weights["w"][0, :, -1].float().mean(0)[visual]
                        cosine = F.cosine_similarity(scores, previous, dim=0) if previous is not None else None
                        same = cosine is not None and float(cosine) >= similarity
                        previous = scores
                        n_keys = weights["w"].shape[-1]
                        mask = torch.zeros(1, 1, 1, n_keys)
                        if same:
                            kept.append(None)
                        else:
                            budget = sv.keep_count(retain, visual.numel())
                            top = torch.topk(scores, budget).indices
                            hidden = torch.ones(visual.numel(), dtype=torch.bool)
                            hidden[top] = False
                            mask[0, 0, 0, visual[hidden]] = torch.finfo(torch.float32).min
                            kept.append(budget)
                logits.append(model.lm_head(tm.norm(h)))
            tokens.append(int(logits[-1][:, -1].argmax(-1)))
    finally:
        hook.remove()
    return logits, tokens, kept


@pytest.mark.parametrize("name", ["llama_span", "qwen2_5_vl"])
@pytest.mark.parametrize("similarity", [0.9, -1.0, 1.0], ids=["authors", "every-step-alike", "every-step-pruned"])
def test_decode_pruning_equals_the_hand_written_loop(name, similarity):
    case, model, inputs = _eager(name)
    method = sv.DyCoke(retain=1.0, dp_layer=2, dp_retain=0.25, dp_similarity=similarity)
    with case.apply(model, method) as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=N_DECODE, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    logits, tokens, kept = _hand_written(case, model, inputs, 2, 0.25, similarity)
    assert out.sequences[0, -N_DECODE:].tolist() == tokens
    for step, (a, b) in enumerate(zip(out.logits, logits, strict=True)):
        assert (a - b[:, -1]).abs().max() < 1e-4, f"step {step}"
    assert [k[0] for k in handle.last_stats.decode_kept] == kept
    if similarity < 0:  # every step after the first is "like the last one": all keys
        assert kept[1:] == [None] * (N_DECODE - 2) and kept[0] is not None
    if similarity == 1.0:  # later steps prune too, with decoded tokens in the cache
        assert None not in kept
    # the pruning changes what the model computes (else this test could not fail)
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=N_DECODE, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    assert (plain.logits[1] - out.logits[1]).abs().max() > 1e-3


def test_decode_pruning_batched_equals_one_by_one():
    case = BY_NAME["llava_onevision"]
    model = case.build(0, "sdpa")
    assert_batch_equals_one_by_one(case, model, case.samples(model), sv.DyCoke(retain=0.5, dp_layer=2))


def test_no_decode_pruning_without_dp_or_in_a_direct_call():
    case, model, inputs = _eager("llama_span")
    with case.apply(model, sv.DyCoke(retain=0.5, dp=False)) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert handle.last_stats.decode_kept == []
    with case.apply(model, sv.DyCoke(retain=0.5)) as handle, torch.no_grad():
        model(**inputs)
        assert handle.last_stats.decode_kept == []


@pytest.mark.parametrize("bad", [{"dp_layer": 0}, {"dp_retain": 0.0}, {"dp": "yes"}, {"dp_similarity": 2.0}])
def test_dycoke_refuses_bad_decode_options(bad):
    with pytest.raises(sv.ConfigError):
        sv.DyCoke(**bad)


def test_decode_layer_beyond_the_depth_is_refused_at_apply():
    case, model, _ = _eager("llama_span")
    with pytest.raises(sv.ConfigError, match="decode pruning from layer 9"):
        case.apply(model, sv.DyCoke(dp_layer=9))


def test_user_asks_for_beam_search_with_decode_pruning():
    case, model, inputs = _eager("llama_span")
    with case.apply(model, sv.DyCoke(retain=0.5)), torch.no_grad(), pytest.raises(sv.InputError, match="beam"):
        model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False)


def test_decode_pruning_chooses_among_the_keys_its_layers_still_hold():
    """An in-decoder stage at the decode layer leaves fewer visual keys there than in layer L-1: the budget is
    a share of what layer L holds."""
    case, model, inputs = _eager("llama_span")
    method = sv.Schedule([sv.DyCoke(retain=1.0, dp_layer=2, dp_retain=0.25, dp_similarity=1.0),
                          sv.FastV(retain=0.25, layer=2)])
    with case.apply(model, method) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    held = handle.last_stats.stages[-1].n_kept[0]
    assert [k[0] for k in handle.last_stats.decode_kept] == [sv.keep_count(0.25, held)] * 2


def test_sliding_window_decoders_refuse_decode_pruning_and_contiguous_positions():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=32, pad_token_id=0)
    model = MistralForCausalLM(cfg).eval()
    span = sv.VideoSpan(4, 8, 16)
    with pytest.raises(sv.ConfigError, match="sliding-window"):
        sv.apply(model, sv.DyCoke(retain=0.5, dp_layer=2), span=span)
    with pytest.raises(sv.ConfigError, match="sliding-window"):
        sv.apply(model, sv.DivPrune(retain=0.5, positions="contiguous"), span=span)
    ids = torch.randint(3, 120, (1, 4 + 128 + 6), generator=torch.Generator().manual_seed(0))
    with sv.apply(model, sv.DivPrune(retain=0.5), span=span), torch.no_grad():  # auto: original positions here
        pruned = model(input_ids=ids).logits[:, -1]
    with sv.apply(model, sv.DivPrune(retain=0.5, positions="original"), span=span) as h, torch.no_grad():
        same = model(input_ids=ids).logits[:, -1]
    assert torch.equal(pruned, same) and h.last_stats.stages[0].n_kept == [64]
