"""HF ⇄ Megatron conversion driven by a model family's mapping table: tensor-parallel sharding,
streaming IO, in-memory refit."""
