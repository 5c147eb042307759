"""Decode a video file with PyAV and sample its frames: N evenly spaced frames, or frames at a rate.

The sampled frames come with their timestamps (seconds from the start), which some model templates write into
the prompt (Qwen3-VL's `<t seconds>`, SmolVLM2's frame labels). Every failure a user can cause is an `InputError`
that names the file and says what to do; a file that decodes to fewer frames than its header promises (cut
short, e.g. an incomplete download) is sampled from the frames that decode, with a `TruncatedVideoWarning`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError


class TruncatedVideoWarning(UserWarning):
    """A video file decodes to fewer frames than its header promises: the answer sees only the frames that decode.
    Turn it into an error with `warnings.simplefilter("error", TruncatedVideoWarning)`."""


@dataclass(frozen=True)
class Frames:
    """Sampled frames of one video.

    pixels: (T, H, W, 3) uint8 RGB; timestamps: seconds of each frame from the video's start (its presentation
    time); indices: their frame numbers in the decoded stream; fps: the stream's average frame rate; n_total: the
    frames that decode (fewer than the header promises for a file cut short).
    """

    pixels: torch.Tensor
    timestamps: list[float]
    indices: list[int]
    fps: float
    n_total: int

    @property
    def n_frames(self) -> int:
        return int(self.pixels.shape[0])


def sample_indices(n_total: int, fps: float, n_frames: int | None = None, sample_fps: float | None = None,
                   max_frames: int | None = None, times: Sequence[float] | None = None) -> list[int]:
    """Frame numbers to keep: `n_frames` evenly spaced (the centre of n equal bins, as lmms-eval's uniform
    sampling), or one frame every 1/sample_fps seconds (at most `max_frames`, evenly thinned if more).

    Sampling by rate goes by time: at 0, 1/sample_fps, 2/sample_fps, ... seconds it keeps the frame on screen then
    (the last one shown at or before that time), each frame once. `times` are the frames' presentation times in
    seconds; without them frame i is taken to be shown at i / fps (a constant frame rate). The last frame is shown
    for 1 / fps seconds (`fps`: the stream's average rate).
    """
    if (n_frames is None) == (sample_fps is None):
        raise InputError("give exactly one of n_frames (how many frames) or sample_fps (frames per second)")
    for name, value in (("n_frames", n_frames), ("max_frames", max_frames)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InputError(f"{name}={value!r} must be an integer >= 1")
    if n_frames is not None:
        if n_frames > n_total:
            raise InputError(
                f"the video has {n_total} frames, fewer than the {n_frames} asked for; ask for at most {n_total}"
            )
        return [int((i + 0.5) * n_total / n_frames) for i in range(n_frames)]
    if isinstance(sample_fps, bool) or not isinstance(sample_fps, int | float) or not (
            sample_fps > 0 and math.isfinite(sample_fps)):
        raise InputError(f"sample_fps={sample_fps} must be a positive number of frames per second")
    if times is None:
        times = [i / fps for i in range(n_total)]
    elif len(times) != n_total:
        raise InputError(f"{len(times)} frame times for {n_total} frames; give one time per frame")
    # a running maximum, so that a frame shown out of order never moves the search backwards
    shown = list(itertools.accumulate((float(t) - float(times[0]) for t in times), max))
    end = shown[-1] + 1 / fps
    eps = 1e-6  # float rounding of pts * time_base: a frame at exactly k / sample_fps is the one on screen
    n_targets = max(1, math.ceil(end * sample_fps - eps))
    picked = sorted({max(0, bisect.bisect_right(shown, k / sample_fps + eps) - 1) for k in range(n_targets)})
    if max_frames is not None and len(picked) > max_frames:
        picked = [picked[int((i + 0.5) * len(picked) / max_frames)] for i in range(max_frames)]
    return picked


def read_video(path: str | Path, n_frames: int | None = None, sample_fps: float | None = None,
               max_frames: int | None = None) -> Frames:
    """Decode `path` and keep `n_frames` evenly spaced frames, or frames at `sample_fps` per second (by the frames'
    presentation times, so that a variable-frame-rate video is sampled evenly in time; see `sample_indices`).

    A file that decodes to fewer frames than its header promises (cut short) is sampled from the frames that
    decode, with one `TruncatedVideoWarning` naming the file and both counts; where those frames are too few for
    `n_frames`, the `InputError` says the file looks cut short.
    """
    import av

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give one video file, e.g. {path / 'clip.mp4'}")
    if not path.is_file():
        raise InputError(f"video file {path} does not exist")
    try:
        # pass 1: count the frames and their times (headers' frame counts are often missing or wrong);
        # pass 2: convert only the sampled ones, so a long video never sits in memory
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            promised = int(stream.frames or 0)  # the header's count; 0 where the container does not store it
            times = [frame.time for frame in container.decode(stream)]
        if not times:
            raise InputError(f"{path} has no decodable frames")
        # seconds from the first frame (a stream may start at a non-zero time); frames without a presentation
        # time are taken to be at the average rate
        if all(t is not None for t in times):
            seconds = [float(t) - float(times[0]) for t in times]
        else:
            seconds = [i / fps for i in range(len(times))]
        short = len(times) < promised
        if short and isinstance(n_frames, int) and n_frames > len(times):
            raise InputError(
                f"{path} decodes to {len(times)} frames but its header promises {promised}: the file looks cut "
                f"short, and {len(times)} are fewer than the {n_frames} asked for; re-download or re-encode it, "
                f"or ask for at most {len(times)} frames"
            )
        keep = sample_indices(len(times), fps, n_frames, sample_fps, max_frames, seconds)
        wanted, arrays = set(keep), {}
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    arrays[i] = frame.to_ndarray(format="rgb24")
                if i >= keep[-1]:
                    break
    except av.error.FFmpegError as err:
        raise InputError(f"{path} cannot be decoded as a video ({err}); is it a complete video file?") from None
    if short:
        warnings.warn(
            f"{path} decodes to {len(times)} frames but its header promises {promised}: the file looks cut short, "
            f"so only its first {seconds[-1] + 1 / fps:.2f} s are sampled; re-download or re-encode it for the "
            "whole video", TruncatedVideoWarning, stacklevel=2)
    return Frames(torch.from_numpy(np.stack([arrays[i] for i in keep])), [seconds[i] for i in keep], keep, fps,
                  len(times))


def write_video(path: str | Path, pixels: torch.Tensor, fps: int = 8) -> Path:
    """Encode (T, H, W, 3) uint8 frames as an mp4 (tests and demos make their own videos)."""
    import av

    path = Path(path)
    frames = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
