"""Qwen2.5-VL on megatron-core: mrope position ids, configuration from an HF config, the model, its
mapping table and tiny factory, declared as one model family in `bundle.py`."""
