"""Which frames and tokens each method kept, for one sample."""

from __future__ import annotations

from pathlib import Path

import torch

from .figure import pyplot, save


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
    plt = pyplot()
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
    return save(fig, path)


def overlay_frames(frames: torch.Tensor, mask: torch.Tensor, dim: float = 0.25) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames with the cells where `mask` (T, rows, cols) is False dimmed to `dim` of their
    brightness: the kept tokens' cells show the frame as the model saw it.

    Cell (r, c) of a rows x cols grid covers pixels [r*H//rows, (r+1)*H//rows) x [c*W//cols, (c+1)*W//cols).
    """
    t, h, w, _ = frames.shape
    rows, cols = int(mask.shape[1]), int(mask.shape[2])
    r_of = torch.arange(h) * rows // h  # the grid row of each pixel row
    c_of = torch.arange(w) * cols // w
    pixel_kept = mask[:, r_of][:, :, c_of]  # (T, H, W)
    out = frames.float()
    out[~pixel_kept] *= dim
    return out.round().clamp(0, 255).to(torch.uint8)


def plot_kept_on_frames(
    frames: torch.Tensor,
    masks: dict[str, torch.Tensor],
    path: Path,
    timestamps: list[float] | None = None,
    title: str = "",
    per_row: int = 8,
) -> Path:
    """The sampled frames once per label, dropped tokens' cells dimmed, kept ones as the model saw them.

    frames: (T, H, W, 3) uint8; masks: label -> (T, rows, cols) bool of kept cells (`TokenGrid.mask`).
    """
    plt = pyplot()

    t = int(frames.shape[0])
    cols = min(per_row, t)
    lines = -(-t // cols)
    fig, axes = plt.subplots(len(masks) * lines, cols, figsize=(1.6 * cols, 1.4 * lines * len(masks) + 0.6),
                             squeeze=False)
    for m, (label, mask) in enumerate(masks.items()):
        shown = overlay_frames(frames, mask)
        share = float(mask.float().mean())
        for i in range(lines * cols):
            ax = axes[m * lines + i // cols, i % cols]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= t:
                ax.axis("off")
                continue
            ax.imshow(shown[i].numpy(), interpolation="nearest")
            stamp = f"{timestamps[i]:.1f}s" if timestamps else f"#{i}"
            ax.set_title(stamp, fontsize=6, pad=1)
            if i % cols == 0:
                ax.set_ylabel(f"{label}\n{share:.0%} of cells" if i == 0 else "", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path, dpi=110)
