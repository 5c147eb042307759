"""Check, before a model loads, that every clip still to be answered can give the frames asked for.

The frame count comes from the container's header (mp4/mov keep one per stream); where a header has none (mkv,
webm, some avi), the video stream's packets are counted without decoding them (one packet per frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .data import QARecord
from .files import DataError

_SHOWN = 5


def frame_count(path: Path) -> int:
    """The number of frames of `path`'s first video stream; `DataError` when it cannot be read as a video."""
    import av

    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} has no video stream")
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)  # the last one is an empty flush
    except av.error.FFmpegError as err:
        raise DataError(f"{path} cannot be read as a video ({err})") from None


def check_clips(samples: Sequence[QARecord], frames: int, fps: float | None, source: str = "") -> None:
    """Raise one single-line `DataError` naming every sample whose clip cannot be read, or has fewer frames than
    `frames` when frames are sampled evenly (with `fps`, `frames` is only a cap and any frame will do)."""
    counts: dict[Path, int | str] = {}
    short: list[tuple[QARecord, int]] = []
    broken: list[tuple[QARecord, str]] = []
    for rec in samples:
        if rec.video not in counts:
            try:
                counts[rec.video] = frame_count(rec.video)
            except DataError as err:
                counts[rec.video] = str(err)
        n = counts[rec.video]
        if isinstance(n, str):
            broken.append((rec, n))
        elif n < (1 if fps is not None else frames):
            short.append((rec, n))
    if not short and not broken:
        return
    where = f" in {source}" if source else ""
    named = broken + [(r, f"{r.video} has {n} frames") for r, n in short]
    items = [f"line {r.line} (id {r.id}): {why}" for r, why in sorted(named, key=lambda item: item[0].line)]
    shown = "; ".join(items[:_SHOWN]) + (f"; and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
    reasons, todo = [], []
    if broken:
        reasons.append("cannot be read")
        todo.append("fix or replace the files that cannot be read")
    if short:
        fewest = min(n for _, n in short)
        reasons.append(f"have fewer than the {frames} frames --frames asks for" if fps is None else "have no frames")
        todo.append(f"give --frames {fewest} or fewer, or --fps R to sample by rate (--frames is then a cap)"
                    if fewest else "replace the clips without frames")
    raise DataError(f"{len(items)} of the {len(samples)} samples still to answer{where} name clips that "
                    f"{' or '.join(reasons)}: {shown}; {', or '.join(todo)}, or remove those lines")
