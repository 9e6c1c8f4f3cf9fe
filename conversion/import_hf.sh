#!/usr/bin/env bash
# Hugging Face Qwen2.5-VL directory -> megatron-core torch_dist checkpoint (loads at any TP/PP).
set -euo pipefail
exec xr-nemo convert import "$@"
