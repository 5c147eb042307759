"""Registers the `sharp_vlm` model with lmms-eval (0.7.3) through the `lmms_eval.models` entry-point group.

lmms-eval reads the group when its model registry starts and calls `manifests()`; the model class itself
(`sharp_vlm.eval.lmms_model.SharpVLM`) is imported only when a run asks for `--model sharp_vlm`. This module does
not import lmms-eval at import time, so the entry point costs nothing where lmms-eval is not installed.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "sharp_vlm"
CLASS_PATH = "sharp_vlm.eval.lmms_model.SharpVLM"


def manifests() -> list[Any]:
    """The entry point's payload: one `ModelManifest` for lmms-eval's registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]
