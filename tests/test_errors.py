"""Bad input gets a clear error that says what to do."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.testing import tiny_llama


@pytest.mark.parametrize("retain", [0.0, -0.1, 1.5, 2])
def test_retain_outside_unit_interval(retain):
    with pytest.raises(sv.ConfigError, match=r"outside \(0, 1\]"):
        sv.FastV(retain=retain)


def test_in_decoder_stage_needs_layer_at_least_one():
    with pytest.raises(sv.ConfigError, match=">= 1"):
        sv.FastV(retain=0.5, layer=0)
    sv.UniformPrune(retain=0.5, layer=0)  # pre-LLM methods may run before the decoder


def test_layer_beyond_depth(qwen25):
    model, _ = qwen25
    with pytest.raises(sv.ConfigError, match="beyond the model's depth; this decoder has 4 layers"):
        sv.apply(model, sv.FastV(retain=0.5, layer=4))
    assert "generate" not in model.__dict__  # nothing left attached


def test_unsupported_model():
    with pytest.raises(sv.UnsupportedModelError, match="Linear is not supported; supported:"):
        sv.apply(torch.nn.Linear(2, 2), sv.FastV())


def test_not_a_method(qwen25):
    with pytest.raises(sv.ConfigError, match="expected a method config"):
        sv.apply(qwen25[0], {"method": "fastv"})


def test_no_video_in_prompt(qwen25):
    model, inputs = qwen25
    text = {"input_ids": inputs["input_ids"][:, :5], "attention_mask": inputs["attention_mask"][:, :5],
            "mm_token_type_ids": torch.zeros_like(inputs["input_ids"][:, :5])}
    with sv.apply(model, sv.FastV()), torch.no_grad(), pytest.raises(sv.InputError, match="no visual tokens"):
        model(**text)


def test_missing_mm_token_type_ids(qwen25):
    model, inputs = qwen25
    bad = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with sv.apply(model, sv.FastV()), torch.no_grad(), pytest.raises(sv.InputError, match="mm_token_type_ids"):
        model(**bad)


def test_grid_does_not_match_tokens(qwen25):
    # the model's vision path checks features against tokens; the adapter checks the grids themselves
    from sharp_vlm.models.qwen_vl import QwenVLAdapter

    model, inputs = qwen25
    call = dict(inputs, video_grid_thw=torch.tensor([[8, 10, 10]]))
    with pytest.raises(sv.InputError, match="does not match its grid"):
        QwenVLAdapter(model).find_layouts(call, inputs["input_ids"].shape[1], 1)
    call = dict(inputs, video_grid_thw=torch.tensor([[4, 8, 8], [4, 8, 8]]))
    assert QwenVLAdapter(model).find_layouts(call, inputs["input_ids"].shape[1], 1)[0].n_frames == 8
    with pytest.raises(sv.InputError, match="more video tokens"):
        QwenVLAdapter(model).find_layouts(dict(inputs, video_grid_thw=torch.tensor([[4, 8, 8]])),
                                          inputs["input_ids"].shape[1], 1)


def test_generic_model_without_span():
    model = tiny_llama()
    with sv.apply(model, sv.FastV()), torch.no_grad(), pytest.raises(sv.InputError, match="VideoSpan"):
        model(input_ids=torch.randint(3, 100, (1, 40)))


def test_generic_span_outside_input():
    model = tiny_llama()
    with sv.apply(model, sv.FastV(), span=sv.VideoSpan(10, 8, 8)), torch.no_grad():
        with pytest.raises(sv.InputError, match="does not fit"):
            model(input_ids=torch.randint(3, 100, (1, 40)))


def test_unknown_method_and_option():
    with pytest.raises(sv.ConfigError, match="unknown method 'fastvv'"):
        sv.load_config({"method": "fastvv"})
    with pytest.raises(sv.ConfigError, match="fastv has no option"):
        sv.load_config({"method": "fastv", "ratio": 0.1})


def test_user_reenters_a_removed_handle_in_a_loop():
    model = tiny_llama()
    ids = torch.randint(3, 100, (1, 40))
    handle = sv.apply(model, sv.FastV(retain=0.25, layer=1), span=sv.VideoSpan(2, 4, 8))
    handle.remove()
    for _ in range(2):
        with handle, torch.no_grad():
            model(input_ids=ids)
        assert handle.last_stats.stages[0].n_kept == [8]
        assert "generate" not in model.__dict__ and not hasattr(model, "_sharp_vlm_handle")


@pytest.mark.parametrize(
    "field, value",
    [("retain", 5), ("retain", -1), ("layer", -1), ("layer", 0), ("query", "first")],
)
def test_user_edits_a_config_after_building_it(field, value):
    cfg = sv.FastV(retain=0.5, layer=1)
    setattr(cfg, field, value)
    with pytest.raises(sv.ConfigError, match=field):
        sv.apply(tiny_llama(), cfg, span=sv.VideoSpan(2, 4, 8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"retain": True}, "must be a number"),
        ({"lam": "1"}, "lam='1' must be a number"),
        ({"dedup_tau": "0.9"}, "dedup_tau='0.9' must be a number"),
        ({"max_registers": "1"}, "max_registers='1' must be an integer"),
        ({"lam": float("nan")}, "lam=nan"),
        ({"dedup": "no"}, "dedup='no' must be True or False"),
        ({"mask": None}, "mask=None is not one of"),
    ],
)
def test_user_passes_options_of_the_wrong_type(kwargs, message):
    with pytest.raises(sv.ConfigError, match=message):
        sv.ShaRP(**kwargs)


def test_user_gives_a_bias_cache_a_bad_size_or_folder():
    with pytest.raises(sv.ConfigError, match="BiasCache size='64' must be an integer"):
        sv.BiasCache(size="64")
    with pytest.raises(sv.ConfigError, match="directory=3 must be a directory path"):
        sv.BiasCache(directory=3)
    with pytest.raises(sv.ConfigError, match="must be an sv.BiasCache"):
        sv.apply(tiny_llama(), sv.ShaRP(), span=sv.VideoSpan(2, 4, 8), bias_cache=64)


@pytest.mark.parametrize(
    "kwargs, where",
    [
        ({"fill": "distinct"}, "fill='distinct' is experimental: use sharp_vlm.methods.experimental.ShaRPLab"),
        ({"debias": "frame"}, "debias='frame' is experimental: use sharp_vlm.methods.experimental.ShaRPLab"),
        ({"debias": "cached"}, r"debias='cached' is not a method option: .*bias_cache=sv.BiasCache"),
        ({"dedup_window": 8}, "dedup_window moved to sharp_vlm.methods.experimental.ShaRPLab"),
        ({"mask_scope": "score"}, "mask_scope moved to sharp_vlm.methods.experimental.ShaRPLab"),
        ({"cache_dir": "/tmp/x"}, r"cache_dir moved to sv.apply\(model, cfg, bias_cache="),
    ],
)
def test_user_passes_an_option_that_moved_out_of_sharp(kwargs, where):
    with pytest.raises(sv.ConfigError, match=where):
        sv.ShaRP(**kwargs)
    with pytest.raises(sv.ConfigError, match=where):  # the same words from a config file or the CLI
        sv.load_config({"method": "sharp", **kwargs})


def test_user_gives_random_prune_no_seed():
    with pytest.raises(sv.ConfigError, match="seed=None must be an integer"):
        sv.RandomPrune(seed=None)


@pytest.mark.parametrize("args", [(-1, 4, 8), (0.5, 4, 8), (0, 0, 8), (0, 4, True)])
def test_user_declares_an_impossible_video_span(args):
    with pytest.raises(sv.ConfigError, match="VideoSpan"):
        sv.VideoSpan(*args)


def test_user_span_function_returns_nothing():
    model = tiny_llama()
    with sv.apply(model, sv.FastV(), span=lambda call: None), torch.no_grad():
        with pytest.raises(sv.InputError, match="returned NoneType, not an sv.VideoSpan"):
            model(input_ids=torch.randint(3, 100, (1, 40)))


def test_user_declares_a_span_on_a_video_llm(qwen25):
    with pytest.raises(sv.ConfigError, match="span= is only for decoder-only"):
        sv.apply(qwen25[0], sv.FastV(), span=sv.VideoSpan(0, 4, 8))


def test_user_loads_broken_or_missing_config_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [fastv\n")
    with pytest.raises(sv.ConfigError, match="not valid JSON/YAML"):
        sv.load_config(bad)
    with pytest.raises(sv.ConfigError, match="not valid JSON/YAML"):
        sv.load_config('{"method": "fastv",')
    with pytest.raises(sv.ConfigError, match="does not exist"):
        sv.load_config(tmp_path / "configs" / "mine")
    with pytest.raises(sv.ConfigError, match="neither an existing file nor a mapping"):
        sv.load_config("mine")
    with pytest.raises(sv.ConfigError, match="none has no option.s. retain; its options: none"):
        sv.load_config({"method": "none", "retain": 0.1})


def test_user_writes_off_in_a_yaml_config():
    cfg = sv.load_config("method: sharp\nmask: off\ndebias: off\ndedup: false\n")
    assert (cfg.mask, cfg.debias, cfg.dedup) == ("off", "off", False)


def test_user_loads_a_config_file_without_an_extension(tmp_path, monkeypatch):
    (tmp_path / "fastv-config").write_text("method: fastv\nretain: 0.3\n")
    assert sv.load_config(str(tmp_path / "fastv-config")).retain == 0.3
    monkeypatch.chdir(tmp_path)
    assert sv.load_config("fastv-config").retain == 0.3


def test_user_asks_for_a_training_loss():
    model = tiny_llama()
    ids = torch.randint(3, 100, (1, 40))
    with sv.apply(model, sv.FastV(), span=sv.VideoSpan(2, 4, 8)), pytest.raises(sv.InputError, match="labels="):
        model(input_ids=ids, labels=ids)


def test_user_appends_a_new_video_to_a_pruned_cache(qwen25):
    model, inputs = qwen25
    with sv.apply(model, sv.FastV(retain=0.25)), torch.no_grad():
        out = model(**inputs, use_cache=True)
        cache = out.cache
        more = {k: v for k, v in inputs.items() if k in ("input_ids", "mm_token_type_ids")}
        mask = torch.ones(1, cache.get_seq_length() + more["input_ids"].shape[1], dtype=torch.long)
        with pytest.raises(sv.InputError, match="cannot be appended to a KV cache filled by a pruned prefill"):
            model(**more, attention_mask=mask, cache=cache, pixel_values_videos=inputs["pixel_values_videos"],
                  video_grid_thw=inputs["video_grid_thw"])


def test_a_later_turn_the_adapter_cannot_read_is_an_error_not_text(qwen25):
    # video placeholders without the token types that place them: refused as in a prompt, not decoded as text
    model, inputs = qwen25
    with sv.apply(model, sv.FastV(retain=0.25)), torch.no_grad():
        cache = model(**inputs, use_cache=True).cache
        ids = inputs["input_ids"][:, -40:].clone()
        ids[0, :4] = model.config.video_token_id
        mask = torch.ones(1, cache.get_seq_length() + ids.shape[1], dtype=torch.long)
        with pytest.raises(sv.InputError, match="missing `mm_token_type_ids`"):
            model(input_ids=ids, attention_mask=mask, cache=cache)


def test_user_generates_with_a_static_cache():
    from cases import BY_NAME, model_and_inputs

    case = BY_NAME["llama_span"]
    model, inputs = model_and_inputs("llama_span")
    with case.apply(model, sv.FastV(retain=0.5)), torch.no_grad(), \
            pytest.raises(sv.InputError, match="StaticCache .* use the default dynamic cache"):
        model.generate(**inputs, max_new_tokens=2, do_sample=False, cache_implementation="static")
