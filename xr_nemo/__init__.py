"""xr-nemo: X-Reasoner post-training (long-CoT SFT, then GRPO) on megatron-core, with vLLM rollouts."""

from xr_nemo.models import te_probe as _te_probe

__version__ = "0.1.0"

# Before anything imports megatron-core: a Transformer Engine that is installed but does not import
# would otherwise take every megatron-core import down with it (see te_probe).
_te_probe.guard()
