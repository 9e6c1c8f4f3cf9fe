"""Published architectures, for planning and benchmarks without downloading a checkpoint."""

from __future__ import annotations

from transformers import Qwen3VLConfig

from xr_nemo.models.qwen3_vl.config import ARCHITECTURE


def qwen3_vl_8b_config() -> Qwen3VLConfig:
    """The published Qwen/Qwen3-VL-8B-Instruct architecture."""
    return Qwen3VLConfig(
        architectures=[ARCHITECTURE],
        text_config=dict(
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=262144,
            rms_norm_eps=1e-6,
            attention_bias=False,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            depth=27,
            hidden_size=1152,
            intermediate_size=4304,
            num_heads=16,
            hidden_act="gelu_pytorch_tanh",
            out_hidden_size=4096,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[8, 16, 24],
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
