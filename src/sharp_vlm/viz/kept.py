"""Which frames and tokens each method kept, for one sample."""

from __future__ import annotations

from pathlib import Path

import torch


def plot_kept_tokens(
    kept: dict[str, torch.Tensor],
    n_frames: int,
    tokens_per_frame: int,
    path: Path,
    needle_frames: list[int] | None = None,
    title: str = "",
) -> Path:
    """One row per method: a frames x tokens map, kept tokens dark; needle frames outlined in red.

    kept: label -> kept visual indices (0..n_frames*tokens_per_frame-1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(kept), 1, figsize=(10, 1.1 + 0.9 * len(kept)), squeeze=False)
    for ax, (label, idx) in zip(axes[:, 0], kept.items(), strict=True):
        grid = torch.zeros(n_frames * tokens_per_frame)
        grid[idx.long().cpu()] = 1.0
        img = grid.view(n_frames, tokens_per_frame).T  # tokens down, frames across
        ax.imshow(img, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        for f in needle_frames or []:
            ax.add_patch(Rectangle((f - 0.5, -0.5), 1, tokens_per_frame, fill=False, edgecolor="red", lw=1.5))
        share = len(idx) / (n_frames * tokens_per_frame)
        ax.set_ylabel(f"{label}\n{share:.0%}", fontsize=8, rotation=0, ha="right", va="center")
        ax.set_yticks([])
        ax.set_xticks(range(0, n_frames, max(1, n_frames // 16)))
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("frame (each column: the frame's tokens; red: needle frame)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
