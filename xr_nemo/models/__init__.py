"""Model families on megatron-core, each a bundle (`family.py`) found by its checkpoint's architecture
(`registry.py`), and what families share: HF ⇄ Megatron mapping classes, layer specs, norms."""
