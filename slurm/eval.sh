#!/usr/bin/env bash
# Evaluation on one node with 8 vLLM replicas (one process each, started by xr-nemo eval itself):
# `sbatch slurm/eval.sh --model runs/xreasoner_7b_grpo --suite paper [key=value …]`
#SBATCH --job-name=xr-nemo-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append

# shellcheck source=slurm/common.sh
source "${XR_NEMO_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
GPUS_PER_NODE=1  # one launcher task; it starts the replicas (predictions resume after a requeue)
args=("$@")
[[ " $* " == *" data_parallel="* ]] || args+=("data_parallel=${EVAL_REPLICAS:-8}")
xr_nemo_launch eval "${args[@]}"
