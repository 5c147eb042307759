"""A patched model's lifecycle: threads, copies, pickling, torch.compile."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.testing import tiny_llama

SPAN = sv.VideoSpan(2, 4, 8)


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 100, (1, 40), generator=torch.Generator().manual_seed(seed))


def test_user_calls_generate_from_two_threads_on_one_patched_model():
    model = tiny_llama()
    started, release = threading.Event(), threading.Event()
    outcome = {}

    def hold(module, args, kwargs):  # keeps the first call inside the model until the second has tried
        if threading.current_thread().name == "first":
            started.set()
            release.wait(30)

    with sv.apply(model, sv.FastV(retain=0.5, layer=1), span=SPAN), torch.no_grad():
        hook = model.model.layers[0].register_forward_pre_hook(hold, with_kwargs=True)

        def first():
            outcome["first"] = model.generate(input_ids=_ids(), max_new_tokens=3, do_sample=False)

        t = threading.Thread(target=first, name="first")
        t.start()
        started.wait(30)
        with pytest.raises(sv.SharpError, match="already running a call in another thread"):
            model.generate(input_ids=_ids(1), max_new_tokens=3, do_sample=False)
        release.set()
        t.join(60)
        hook.remove()
        # the refused call left nothing behind: the model serves the next call, and the first call was pruned
        again = model.generate(input_ids=_ids(), max_new_tokens=3, do_sample=False)
    assert torch.equal(outcome["first"], again)


def test_user_deep_copies_a_patched_model():
    model = tiny_llama()
    ids = _ids()
    with torch.no_grad():
        plain = model(input_ids=ids).logits[:, -1]
    with sv.apply(model, sv.FastV(retain=0.25, layer=1), span=SPAN) as h, torch.no_grad():
        pruned = model(input_ids=ids).logits[:, -1]
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for p in twin.parameters():
                p.zero_()  # the copy's weights are its own: the original must not change
        assert torch.equal(model(input_ids=ids).logits[:, -1], pruned)  # still patched
        assert h.last_stats is not None
        assert "generate" not in twin.__dict__ and not hasattr(twin, "_sharp_vlm_handle")
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits[:, -1], plain)  # unpatched: the model's own output
    assert not torch.equal(pruned, plain)


def test_user_pickles_a_patched_model(tmp_path):
    model = tiny_llama()
    with sv.apply(model, sv.FastV(retain=0.5, layer=1), span=SPAN):
        with pytest.raises(sv.SharpError, match=r"handle.remove\(\) first"):
            pickle.dumps(model)
        with pytest.raises(sv.SharpError, match=r"handle.remove\(\) first"):
            torch.save(model, tmp_path / "model.pt")
    assert pickle.loads(pickle.dumps(model)) is not None  # removed: it pickles again


def test_user_applies_to_a_compiled_model():
    compiled = torch.compile(tiny_llama())
    with pytest.raises(sv.ConfigError, match="apply the method to the model first and compile after"):
        sv.apply(compiled, sv.FastV(retain=0.5, layer=1), span=SPAN)
