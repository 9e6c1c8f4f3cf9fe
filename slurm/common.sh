#!/usr/bin/env bash
# shellcheck disable=SC2034  # RECIPE and OVERRIDES are read by the scripts that source this file
# Sourced by the sbatch scripts: one place for the launch, the environment and requeue on preemption.
#
# Settings (environment variables, all optional):
#   XR_NEMO_HOME      the repository (default: the directory sbatch was called from)
#   XR_NEMO_PYTHON    the interpreter (default: $XR_NEMO_HOME/.venv/bin/python, else python3)
#   GPUS_PER_NODE     tasks per node, one per GPU (default: 8)
#   CONTAINER_IMAGE   run inside a pyxis/enroot container; CONTAINER_MOUNTS adds mounts (src:dst,…)
#   FAULT_TOLERANCE   1: one nvidia-resiliency-ext ft_launcher per node starts the GPU ranks, watches
#                     their heartbeats and restarts all of them from the latest checkpoint when one
#                     fails or hangs (FT_MAX_RESTARTS times, default 3; FT_HEARTBEAT_TIMEOUT seconds
#                     until a rank that stopped beating counts as hung, default 1800, replaced by a
#                     learned one after `fault_tolerance.learn_timeout_after` steps)
# Arguments: `recipe=NAME` picks the recipe; everything else is a recipe override passed through.

set -euo pipefail

XR_NEMO_HOME="${XR_NEMO_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
if [[ -z "${XR_NEMO_PYTHON:-}" ]]; then
    if [[ -x "$XR_NEMO_HOME/.venv/bin/python" ]]; then XR_NEMO_PYTHON="$XR_NEMO_HOME/.venv/bin/python"; else XR_NEMO_PYTHON=python3; fi
fi

# NCCL over InfiniBand where present; quiet unless asked. Users override any of these in their env.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export NCCL_IB_TIMEOUT="${NCCL_IB_TIMEOUT:-22}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"  # megatron-core's overlap needs it
export UCX_TLS="${UCX_TLS:-rc,sm,self}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"

RECIPE=""  # set by xr_nemo_parse_args, read by the sbatch scripts
OVERRIDES=()

# Split `recipe=NAME` from the overrides.
xr_nemo_parse_args() {
    local default_recipe="$1"
    shift
    RECIPE="$default_recipe"
    OVERRIDES=()
    local arg
    for arg in "$@"; do
        case "$arg" in
            recipe=*) RECIPE="${arg#recipe=}" ;;
            *) OVERRIDES+=("$arg") ;;
        esac
    done
}

# Requeue this job when Slurm warns of the end (--signal=B:USR1@…) or preempts it (SIGTERM): the
# training loop checkpoints every `checkpoint.every_steps`, and the requeued job resumes from the
# latest checkpoint (trainer.resume=auto), so at most those steps are redone.
xr_nemo_requeue() {
    echo "[slurm] job ${SLURM_JOB_ID:-?}: signal received, requeueing" >&2
    if [[ -n "${XR_NEMO_CHILD:-}" ]]; then kill -TERM "$XR_NEMO_CHILD" 2>/dev/null || true; fi
    scontrol requeue "${SLURM_JOB_ID}"
    exit 0
}

# Run `python -m xr_nemo.cli ARGS…` on every GPU of the job's nodes: one srun task per GPU, or under
# FAULT_TOLERANCE=1 one ft_launcher task per node that starts a process per GPU.
xr_nemo_launch() {
    local container=()
    if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
        container=(--container-image="$CONTAINER_IMAGE" --container-workdir="$XR_NEMO_HOME")
        local mounts="$XR_NEMO_HOME:$XR_NEMO_HOME${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
        container+=(--container-mounts="$mounts")
    fi
    echo "[slurm] job ${SLURM_JOB_ID:-?}: ${SLURM_NNODES:-1} node(s) × $GPUS_PER_NODE tasks: xr-nemo $*" >&2
    trap xr_nemo_requeue USR1 TERM
    local tasks_per_node="$GPUS_PER_NODE" program=("$XR_NEMO_PYTHON")
    if [[ "${FAULT_TOLERANCE:-0}" == 1 ]]; then
        local head
        head="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)"
        tasks_per_node=1
        program+=(-m nvidia_resiliency_ext.fault_tolerance.launcher
            --nnodes="${SLURM_NNODES:-1}" --nproc-per-node="$GPUS_PER_NODE"
            --rdzv-backend=c10d --rdzv-endpoint="$head:${FT_RDZV_PORT:-29400}" --rdzv-id="${SLURM_JOB_ID:-0}"
            --max-restarts="${FT_MAX_RESTARTS:-3}" --ft-rank-heartbeat-timeout="${FT_HEARTBEAT_TIMEOUT:-1800}"
            --ignore-missing-fault-tol-cfg)
    fi
    # In the background, so that the batch shell can take Slurm's signal while the step runs.
    srun --ntasks-per-node="$tasks_per_node" --kill-on-bad-exit=1 --label "${container[@]}" \
        --chdir="$XR_NEMO_HOME" "${program[@]}" -m xr_nemo.cli "$@" &
    XR_NEMO_CHILD=$!
    wait "$XR_NEMO_CHILD"
}
