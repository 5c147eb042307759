"""What the figure scripts share: SmolLM2 cut to the selection layer, and bars per probe family."""

from __future__ import annotations

from typing import Any

import torch

from sharp_vlm.testing.smollm2 import load_tokenizer, model_from_gguf, smollm2_path
from sharp_vlm.viz.figure import pyplot, save


def selection_model(layer: int) -> tuple[Any, Any]:
    """SmolLM2-135M with layers 0..`layer` only (a selection at `layer` reads nothing deeper) and its tokenizer.

    A fresh model: the one `load_smollm2` returns is shared within the process and must not be cut.
    """
    tok = load_tokenizer()
    model = model_from_gguf(*smollm2_path(), torch.float32, "sdpa")
    model.model.layers = model.model.layers[: layer + 1]
    model.config.num_hidden_layers = layer + 1
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def family_bars(panels: dict[str, dict[str, dict[str, list[float]]]], title: str, path: str,
                legend: tuple[int, str] = (0, "best")) -> None:
    """One panel per entry of `panels` ({panel title: {label: {family: values}}}): for each label a bar per
    family at the mean of its values, between 0 and 1. `legend`: (panel index, matplotlib location)."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(12, 3.8), squeeze=False)
    for ax, (panel, by_label) in zip(axes[0], panels.items(), strict=True):
        names = list(next(iter(by_label.values())))
        width = 0.81 / len(by_label)
        for i, (label, by_family) in enumerate(by_label.items()):
            xs = [j + (i - (len(by_label) - 1) / 2) * width for j in range(len(names))]
            ax.bar(xs, [sum(by_family[f]) / len(by_family[f]) for f in names], width, label=label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(panel, fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0][legend[0]].legend(fontsize=7, loc=legend[1])
    fig.suptitle(title, fontsize=9)
    save(fig, path, dpi=110)
