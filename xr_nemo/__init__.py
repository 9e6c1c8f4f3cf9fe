"""xr-nemo: X-Reasoner post-training (long-CoT SFT, then GRPO) on megatron-core, with vLLM rollouts."""

__version__ = "0.1.0"
