"""Model definitions on megatron-core: layer specs, norms and the Qwen2.5-VL bundle."""
