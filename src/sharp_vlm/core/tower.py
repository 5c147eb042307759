"""What the vision tower's attention says about each visual token (captured by `models/vision_attention.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TowerFeatures:
    """One sample's tower attention over its visual tokens (layout order).

    received: (N,) attention each token receives, mean over heads and queries; cls: (N,) attention from the [CLS]
    query, mean over heads (None: the tower has no [CLS]); keys: (N, head_dim) the layer's keys, mean over heads.
    """

    received: torch.Tensor
    cls: torch.Tensor | None
    keys: torch.Tensor

    def subset(self, index: torch.Tensor) -> TowerFeatures:
        cls = None if self.cls is None else self.cls[index]
        return TowerFeatures(self.received[index], cls, self.keys[index])
