"""A small generated video-QA set (mp4s + JSONL), for trying `sharp eval` and the lmms-eval plugin without data.

Each video is one flat colour with a little noise; the multiple-choice question asks for the colour, the open
question for its name. A real model answers them easily; the tiny random-weight test models answer at chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..video.decode import write_video

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_sample_set(folder: str | Path, n: int = 4, frames: int = 16, height: int = 40, width: int = 56,
                     open_questions: int = 1, seed: int = 0) -> Path:
    """Write `n` videos under `folder/videos` and `folder/qa.jsonl` (the last `open_questions` records open,
    the others multiple choice with four options); return the JSONL path."""
    folder = Path(folder)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        colour = names[i % len(names)]
        base = torch.tensor(COLOURS[colour], dtype=torch.int16).view(1, 1, 1, 3)
        noise = torch.randint(-20, 21, (frames, height, width, 3), generator=gen, dtype=torch.int16)
        pixels = (base + noise).clamp(0, 255).to(torch.uint8)
        write_video(folder / "videos" / f"v{i}.mp4", pixels, fps=8)
        record = {"id": f"q{i}", "video": f"videos/v{i}.mp4"}
        if i < n - open_questions:
            record |= {"question": "Which colour fills the video?", "options": names, "answer": "ABCD"[i % 4]}
        else:
            record |= {"question": "Name the colour that fills the video in one word.", "answer": colour}
        lines.append(json.dumps(record))
    path = folder / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
