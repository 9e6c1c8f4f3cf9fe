"""HF ⇄ Megatron conversion: name/layout mappings, tensor-parallel sharding, streaming IO."""
