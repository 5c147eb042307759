"""Decoding and sampling real (generated) mp4 files, and the errors a user can cause."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.video.decode import read_video, sample_indices, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames at 10 fps, 32 x 48 px; frame i is a flat grey of level 10 * i (so frames can be told apart)."""
    frames = torch.stack([torch.full((32, 48, 3), 10 * i, dtype=torch.uint8) for i in range(20)])
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=10)


def test_uniform_sampling_picks_bin_centres_with_their_timestamps(clip):
    frames = read_video(clip, n_frames=4)
    assert frames.n_total == 20 and frames.fps == pytest.approx(10)
    assert frames.indices == [2, 7, 12, 17]
    assert frames.pixels.shape == (4, 32, 48, 3) and frames.pixels.dtype == torch.uint8
    assert frames.timestamps == pytest.approx([0.2, 0.7, 1.2, 1.7])
    # the decoded frames are the sampled ones (lossy codec: within a few grey levels)
    levels = frames.pixels.float().mean(dim=(1, 2, 3))
    assert torch.allclose(levels, torch.tensor([20.0, 70.0, 120.0, 170.0]), atol=6)


def test_sampling_by_rate_and_cap(clip):
    frames = read_video(clip, sample_fps=2)
    assert frames.indices == [0, 5, 10, 15] and frames.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert read_video(clip, sample_fps=10, max_frames=5).n_frames == 5


def test_sample_indices_rules():
    assert sample_indices(10, 10.0, n_frames=10) == list(range(10))
    assert sample_indices(100, 25.0, sample_fps=1) == [0, 25, 50, 75]
    with pytest.raises(sv.InputError, match="exactly one of"):
        sample_indices(10, 10.0)
    with pytest.raises(sv.InputError, match="exactly one of"):
        sample_indices(10, 10.0, n_frames=2, sample_fps=1)
    for bad in ({"n_frames": 2.5}, {"n_frames": True}, {"sample_fps": 1, "max_frames": 0}, {"sample_fps": -1}):
        with pytest.raises(sv.InputError, match="must be"):
            sample_indices(10, 10.0, **bad)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(sv.InputError, match="does not exist"):
        read_video(tmp_path / "nope.mp4", n_frames=4)


def test_a_file_that_is_no_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(sv.InputError, match="cannot be decoded as a video"):
        read_video(bad, n_frames=4)


def test_a_video_shorter_than_asked_is_a_clear_error(clip):
    with pytest.raises(sv.InputError, match="has 20 frames, fewer than the 32 asked for"):
        read_video(clip, n_frames=32)
