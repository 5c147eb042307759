"""Decoding and sampling real (generated) mp4 files, and the errors a user can cause."""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.video.decode import TruncatedVideoWarning, read_video, sample_indices, write_video


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


def _write_with_times(path, times: list[float], faststart: bool = False, seed: int = 0):
    """An mp4 whose frame i is shown at times[i] seconds (frames of random noise, so that they compress poorly);
    faststart: the index first (then the header survives when the file's tail is cut off)."""
    import av

    rng = np.random.default_rng(seed)
    ticks = Fraction(1, 12000)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        stream.codec_context.time_base = stream.time_base = ticks
        for t in times:
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t / ticks), ticks
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_user_samples_a_variable_frame_rate_video_with_fps(tmp_path):
    """12 frames in the first second, then one a second until 5 s: at 2 fps the frames on screen at 0, 0.5, 1, 1.5,
    ... 5 s, each once (sampling by frame number at the average rate took 9 of 11 from the first second)."""
    times = [i / 12 for i in range(12)] + [1.0, 2.0, 3.0, 4.0, 5.0]
    clip = _write_with_times(tmp_path / "vfr.mp4", times)
    frames = read_video(clip, sample_fps=2)
    assert frames.n_total == 17
    assert frames.indices == [0, 6, 12, 13, 14, 15, 16]
    assert frames.timestamps == pytest.approx([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0], abs=1e-3)
    assert frames.n_frames == 7
    # the cap thins the sampled frames evenly, and stays spread over the whole clip
    assert read_video(clip, sample_fps=2, max_frames=3).timestamps == pytest.approx([0.5, 2.0, 4.0], abs=1e-3)
    # constant rate: the same frames as by frame number (frame i shown at i / fps)
    assert sample_indices(24, 8.0, sample_fps=3, times=[i / 8 for i in range(24)]) == [0, 2, 5, 8, 10, 13, 16,
                                                                                       18, 21]
    assert sample_indices(24, 8.0, sample_fps=3) == [0, 2, 5, 8, 10, 13, 16, 18, 21]


def test_user_reads_a_video_file_that_was_cut_short(tmp_path):
    """The header promises 40 frames but the tail of the file is missing: sampling goes on over the frames that
    decode, with one warning naming the file and both counts; asking for more frames than decode says why."""
    whole = _write_with_times(tmp_path / "whole.mp4", [i / 12 for i in range(40)], faststart=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole file decodes as promised: no warning
        assert read_video(whole, sample_fps=2).n_total == 40
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = read_video(cut, sample_fps=2)
    assert 0 < frames.n_total < 40
    assert [w.category for w in caught] == [TruncatedVideoWarning]
    message = str(caught[0].message)
    assert str(cut) in message and f"decodes to {frames.n_total} frames" in message and "promises 40" in message
    assert frames.indices == sample_indices(frames.n_total, 12.0, sample_fps=2)
    with pytest.raises(sv.InputError, match=rf"promises 40: the file looks cut short.*at most {frames.n_total}"):
        read_video(cut, n_frames=frames.n_total + 1)


def test_user_reads_a_folder_as_a_video(tmp_path):
    with pytest.raises(sv.InputError, match="is a folder; give one video file"):
        read_video(tmp_path, n_frames=2)
