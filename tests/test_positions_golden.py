"""Golden Qwen-VL position ids: catches a transformers upgrade that changes the M-RoPE layout."""

from __future__ import annotations

from sharp_vlm.testing import tiny_qwen_vl, tiny_video_inputs


def test_qwen25_vl_video_position_ids_are_unchanged():
    model = tiny_qwen_vl("qwen2_5_vl")
    x = tiny_video_inputs(model, frames=4, height=8, width=8, prefix=2, question=2)
    pos, delta = model.model.get_rope_index(
        x.input_ids, mm_token_type_ids=x.mm_token_type_ids, video_grid_thw=x.video_grid_thw
    )
    # 2 text, <vision_start>, 2 temporal patches x 2 x 2 video tokens, <vision_end>, 2 text.
    # Temporal ids step by tokens_per_second (4) per patch; text after the video resumes at
    # start + max(h, w) (5), below the largest temporal id: decoding continues from the last token, not the max.
    assert pos[:, 0].tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 7, 7, 7, 7, 5, 6, 7],
        [0, 1, 2, 3, 3, 4, 4, 3, 3, 4, 4, 5, 6, 7],
        [0, 1, 2, 3, 4, 3, 4, 3, 4, 3, 4, 5, 6, 7],
    ]
    assert delta.flatten().tolist() == [-6]
