"""Decode a video file with PyAV and sample its frames: N evenly spaced frames, or frames at a rate.

The sampled frames come with their timestamps (seconds from the start), which some model templates write into
the prompt (Qwen3-VL's `<t seconds>`, SmolVLM2's frame labels). Every failure a user can cause is an `InputError`
that names the file and says what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError


@dataclass(frozen=True)
class Frames:
    """Sampled frames of one video.

    pixels: (T, H, W, 3) uint8 RGB; timestamps: seconds of each frame from the video's start; indices: their
    frame numbers in the decoded stream; fps: the stream's average frame rate; n_total: frames in the stream.
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
                   max_frames: int | None = None) -> list[int]:
    """Frame numbers to keep: `n_frames` evenly spaced (the centre of n equal bins, as lmms-eval's uniform
    sampling), or one frame every 1/sample_fps seconds (at most `max_frames`, evenly thinned if more)."""
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
    step = fps / sample_fps
    picked = sorted({min(n_total - 1, int(i * step)) for i in range(max(1, math.ceil(n_total / step)))})
    if max_frames is not None and len(picked) > max_frames:
        picked = [picked[int((i + 0.5) * len(picked) / max_frames)] for i in range(max_frames)]
    return picked


def read_video(path: str | Path, n_frames: int | None = None, sample_fps: float | None = None,
               max_frames: int | None = None) -> Frames:
    """Decode `path` and keep `n_frames` evenly spaced frames, or frames at `sample_fps` per second."""
    import av

    path = Path(path)
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
            times = [frame.time for frame in container.decode(stream)]
        if not times:
            raise InputError(f"{path} has no decodable frames")
        keep = sample_indices(len(times), fps, n_frames, sample_fps, max_frames)
        wanted, arrays = set(keep), {}
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    arrays[i] = frame.to_ndarray(format="rgb24")
                if i >= keep[-1]:
                    break
    except av.error.FFmpegError as err:
        raise InputError(f"{path} cannot be decoded as a video ({err}); is it a video file?") from None
    # seconds from the first frame (a stream may start at a non-zero time)
    t0 = float(times[0]) if times[0] is not None else 0.0
    stamps = [float(times[i]) - t0 if times[i] is not None else i / fps for i in keep]
    return Frames(torch.from_numpy(np.stack([arrays[i] for i in keep])), stamps, keep, fps, len(times))


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
