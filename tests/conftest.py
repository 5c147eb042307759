"""Shared fixtures: tiny random-weight models built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch

from sharp_vlm.testing import tiny_qwen_vl, tiny_video_inputs

torch.set_num_threads(2)

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module: tiny matmuls are dominated by thread hand-offs on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", params=FAMILIES)
def qwen(request):
    """(model, inputs) with a 16-frame video: 8 temporal patches x 4 x 4 = 128 visual tokens."""
    model = tiny_qwen_vl(request.param, layers=4)
    return model, tiny_video_inputs(model, frames=16, height=16, width=16).as_kwargs()


@pytest.fixture(scope="session")
def qwen25():
    model = tiny_qwen_vl("qwen2_5_vl", layers=4)
    return model, tiny_video_inputs(model, frames=16, height=16, width=16).as_kwargs()
