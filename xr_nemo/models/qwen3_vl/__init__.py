"""Qwen3-VL (dense): Qwen2.5-VL's layout with qk-norm, interleaved mrope and DeepStack."""
