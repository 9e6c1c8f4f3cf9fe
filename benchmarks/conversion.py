"""Conversion at the full Qwen2.5-VL-7B shapes on this machine: wall time against a plain copy of the
same bytes, and peak memory against the model's size.

Writes a random bf16 checkpoint with the 7B's exact tensor shapes (shard by shard, never the whole model
in memory), then times `cp` of its shards, `xr-nemo convert import` and `xr-nemo convert export`, each
in its own process so its peak RSS is its own. Needs about 4 × 16.6 GB of free disk in --workdir.

    python benchmarks/conversion.py --workdir /tmp/conversion-bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from xr_nemo.conversion.hf_checkpoint import SafetensorsShardWriter, expected_hf_shapes
from xr_nemo.models.qwen25_vl.published import qwen25_vl_7b_config

SHARD_BYTES = 4 * 1024**3

# Peak RSS from VmHWM: unlike ru_maxrss it starts afresh at exec, so it is the step's own.
_MEASURED_STEP = """
import re, time
from xr_nemo.conversion.convert import export_hf, import_hf
start = time.perf_counter()
{call}
seconds = time.perf_counter() - start
status = open("/proc/self/status").read()
print(seconds, int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024)
"""


def write_random_checkpoint(out: Path) -> int:
    """Random bf16 weights in the hub naming, in shards of at most 4 GiB; returns the bytes written."""
    config = qwen25_vl_7b_config()
    out.mkdir(parents=True)
    config.save_pretrained(out)
    writer = SafetensorsShardWriter(out, SHARD_BYTES)
    generator = torch.Generator().manual_seed(0)
    for name, shape in expected_hf_shapes(config).items():
        writer.add(
            name, (torch.rand(shape, generator=generator, dtype=torch.float32) - 0.5).to(torch.bfloat16)
        )
    writer.finish()
    return writer.total_bytes


def _measured(call: str) -> tuple[float, int]:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURED_STEP.format(call=call)], check=True, capture_output=True, text=True
    )
    seconds, peak = result.stdout.split()[-2:]
    return float(seconds), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    hf, copied, megatron, exported = (work / name for name in ("hf", "copy", "megatron", "exported"))

    model_bytes = write_random_checkpoint(hf)
    shapes = expected_hf_shapes(qwen25_vl_7b_config())
    largest = max(torch.Size(shape).numel() for shape in shapes.values()) * 2

    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(hf), str(copied)], check=True)
    copy_seconds = time.perf_counter() - start
    shutil.rmtree(copied)
    import_seconds, import_peak = _measured(f"import_hf({str(hf)!r}, {str(megatron)!r}, progress=False)")
    export_seconds, export_peak = _measured(
        f"export_hf({str(megatron)!r}, {str(exported)!r}, progress=False)"
    )
    shutil.rmtree(work)

    gb = 1e9
    results = {
        "model_gb": round(model_bytes / gb, 2),
        "largest_tensor_gb": round(largest / gb, 2),
        "copy_s": round(copy_seconds, 1),
        "import_s": round(import_seconds, 1),
        "export_s": round(export_seconds, 1),
        "import_time_vs_copy": round(import_seconds / copy_seconds, 2),
        "export_time_vs_copy": round(export_seconds / copy_seconds, 2),
        "import_peak_rss_gb": round(import_peak / gb, 2),
        "export_peak_rss_gb": round(export_peak / gb, 2),
        "import_peak_rss_vs_model": round(import_peak / model_bytes, 2),
        "export_peak_rss_vs_model": round(export_peak / model_bytes, 2),
        "import_peak_rss_vs_largest_tensor": round(import_peak / largest, 2),
        "export_peak_rss_vs_largest_tensor": round(export_peak / largest, 2),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
