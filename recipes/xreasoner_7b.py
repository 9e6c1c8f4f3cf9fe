"""X-Reasoner-7B (Liu et al., 2025). Stage 1 (`sft`): Qwen2.5-VL-7B-Instruct fine-tuned on OpenThoughts-114k.
Stage 2 (`grpo`): see its docstring.

Paper values: 4 epochs; AdamW lr 1e-5, weight decay 0, betas (0.9, 0.999); lr × 0.8 after every epoch;
4 sequences per device on 32 GPUs, so 128 samples per optimizer step (`trainer.global_batch_samples`),
whatever their lengths; sequences truncated at 4,096 tokens; vision tower frozen (the data are text only).

Our defaults elsewhere: gradient clipping at norm 1.0 (the paper mentions none for SFT;
`optim.clip_grad=null` turns it off); the truncation is per sample (a longer one keeps its first 4,096
tokens; llama-recipes' packing would cut a stream of samples into 4,096-token chunks, docs/sft.md); each
step's 128 samples are packed into as many 16,384-token sequences as they need (one per micro-batch,
about four 4,096-token samples: the paper's per-device load without padding), shared over the
data-parallel ranks; one 8×H100 node runs TP=4 × DP=2 (`parallel.tensor_parallel=4`) and accumulates
gradients to the same 128 samples; add nodes to grow DP. For a longer context set
`data.max_length=16384 trainer.seq_length=16384`.
"""

from __future__ import annotations

from xr_nemo.config.schema import EvalConfig, GRPOConfig, SFTConfig


def sft() -> SFTConfig:
    config = SFTConfig()
    config.run.dir = "runs/xreasoner_7b_sft"
    config.model.hf_dir = "Qwen2.5-VL-7B-Instruct"  # a local download of the hub checkpoint
    config.parallel.tensor_parallel = 4
    config.parallel.sequence_parallel = True
    config.data.train = "open-thoughts/OpenThoughts-114k"
    config.data.schema = "openthoughts"
    config.data.max_length = 4096
    config.data.overlong = "truncate"
    config.data.packing = True
    config.data.num_workers = 16
    config.optim.lr = 1e-5
    config.optim.weight_decay = 0.0
    config.optim.beta1, config.optim.beta2 = 0.9, 0.999
    config.optim.clip_grad = 1.0
    config.scheduler.name = "epoch_decay"
    config.scheduler.epoch_decay = 0.8
    config.trainer.epochs = 4
    config.trainer.seq_length = 16384
    config.trainer.micro_batch_size = 1
    config.trainer.global_batch_size = None
    config.trainer.global_batch_samples = 128
    config.checkpoint.every_steps = 200
    config.checkpoint.keep_last = 3
    config.export.hf = True
    config.export.dtype = "bfloat16"
    return config


def grpo() -> GRPOConfig:
    """Stage 2: GRPO on Orz-Math-57k from the stage-1 run.

    Paper values: 3 epochs; lr 3e-6, weight decay 0.01, 10 % warm-up, grad-norm clip 1.0; 128 prompts
    per step; 8 rollouts per prompt; max response 4,096 tokens; temperature 1.0; KL coefficient 0.01;
    clip ratio 0.2 with a higher upper clip ("clip-higher"); token-level loss normalisation.

    Read as veRL reads it (the authors' RL code was a veRL fork): "global batch size 128" is 128 prompts
    per step. The paper stops on the convergence of the training reward; `trainer.stop_on_plateau.
    metric=reward_mean` does that (off here: the 3 epochs are the upper bound).

    Our defaults elsewhere: the upper clip is 0.28 (the paper does not publish it; 0.28 is DAPO's); the
    k3 KL clamped as veRL's `low_var_kl`; constant lr after warm-up; truncated importance sampling
    (cap 2) against vLLM's log-probabilities; no entropy bonus (the paper names none). `data.train`
    expects Orz's `orz_math_57k_collected.json` (a list of [question, answer] turn pairs) downloaded
    next to the run.

    One optimizer step per rollout batch (ours): the paper gives one batch size and no mini-batch size,
    so the 128 prompts are both the rollout batch and the update (veRL with `ppo_mini_batch_size` =
    `data.train_batch_size`). The ratio is then 1 at the update and the clip ratios are inert; veRL's
    other reading, several mini-batch updates per rollout batch (`grpo.updates_per_rollout` > 1), makes
    them bind but needs a mini-batch size the paper does not give (`docs/grpo.md`, "One step").
    """
    config = GRPOConfig()
    config.run.dir = "runs/xreasoner_7b_grpo"
    config.model.checkpoint = "runs/xreasoner_7b_sft"
    config.parallel.tensor_parallel = 4
    config.parallel.sequence_parallel = True
    config.data.train = "orz_math_57k_collected.json"
    config.data.schema = "orz"
    config.data.max_prompt_length = 1024
    config.rollout.engine = "vllm"
    config.rollout.n = 8
    config.rollout.temperature = 1.0
    config.rollout.max_new_tokens = 4096
    config.rollout.gpu_memory_utilization = 0.5
    config.grpo.clip_low = 0.2
    config.grpo.clip_high = 0.28  # ours: DAPO's value; the paper names clip-higher, not its number
    config.grpo.kl_coef = 0.01
    config.grpo.loss_aggregation = "token"
    config.grpo.updates_per_rollout = 1
    config.grpo.entropy_coef = 0.0
    config.reward.correctness = "math"
    config.reward.workers = 8
    config.optim.lr = 3e-6
    config.optim.weight_decay = 0.01
    config.optim.clip_grad = 1.0
    config.scheduler.name = "constant"
    config.scheduler.warmup_fraction = 0.1
    config.trainer.epochs = 3
    config.trainer.prompts_per_step = 128
    config.trainer.micro_batch_size = 4
    config.checkpoint.every_steps = 50
    config.checkpoint.keep_last = 3
    config.export.hf = True
    config.export.dtype = "bfloat16"
    return config


def eval() -> EvalConfig:
    """The paper's evaluation of the final model: greedy, 4,096 output tokens with forced exiting, on the
    headline benchmarks, Table 5's columns (`--suite paper` for all of them). Sampled @k metrics:
    `samples=5 generation.temperature=0.3`."""
    benchmarks = ["mmmu", "mmmu_pro", "mathvista", "mathvision"]
    config = EvalConfig(model="runs/xreasoner_7b_grpo", benchmarks=benchmarks)
    config.generation.temperature = 0.0
    config.generation.max_new_tokens = 4096
    config.generation.thinking_budget = 3840  # ours: the split of 4,096 (256 left for the answer)
    return config
