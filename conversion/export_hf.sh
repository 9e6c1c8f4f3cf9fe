#!/usr/bin/env bash
# megatron-core torch_dist checkpoint -> Hugging Face directory that Transformers and vLLM load as is.
set -euo pipefail
exec xr-nemo convert export "$@"
