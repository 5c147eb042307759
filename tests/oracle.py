"""A hand-written pruned forward of a tiny Qwen-VL model: the reference the engine is tested against.

Layers < K run on every token (optionally under a dense 4-D mask), the kept rows are gathered, layers >= K run
on the short sequence with the original positions, then greedy decoding continues one past the last prompt
position.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def decoder_inputs(model, inputs):
    """inputs_embeds and 3-D position ids that the unpatched model hands to its decoder."""
    seen = {}

    def grab(mod, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]
        seen["pos"] = kwargs["position_ids"]

    h = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    h.remove()
    pos = seen["pos"]
    return seen["embeds"], pos[1:] if pos.shape[0] == 4 else pos


def pruned_forward(model, inputs, keep_positions, layer, n_decode, shallow_mask=None):
    """(logits per step, greedy tokens, cache); ``shallow_mask`` is the attention mask of layers < ``layer``."""
    tm = model.model.language_model
    embeds, pos = decoder_inputs(model, inputs)
    seq = embeds.shape[1]
    keep = torch.ones(seq, dtype=torch.bool)
    keep[inputs["mm_token_type_ids"][0] != 0] = False
    keep[keep_positions] = True
    rows = torch.nonzero(keep).flatten()
    cache = DynamicCache(config=tm.config)
    with torch.no_grad():
        h = embeds
        cos, sin = tm.rotary_emb(h, pos)
        for i, lay in enumerate(tm.layers):
            if i == layer:
                h, cos, sin = h[:, rows], cos[:, rows], sin[:, rows]
            mask = shallow_mask if i < layer else None
            h = lay(h, attention_mask=mask, position_embeddings=(cos, sin), cache=cache, use_cache=True)
        logits = [model.lm_head(tm.norm(h))]
        next_pos = int(pos[:, 0, -1].max()) + 1
        token = logits[-1][:, -1].argmax(-1)
        tokens = [int(token)]
        for t in range(n_decode - 1):
            h = tm.embed_tokens(token)[:, None]
            cos, sin = tm.rotary_emb(h, torch.full((3, 1, 1), next_pos + t))
            for lay in tm.layers:
                h = lay(h, attention_mask=None, position_embeddings=(cos, sin), cache=cache, use_cache=True)
            logits.append(model.lm_head(tm.norm(h)))
            token = logits[-1][:, -1].argmax(-1)
            tokens.append(int(token))
    return logits, tokens, cache
