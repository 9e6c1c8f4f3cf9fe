"""Post-install check run by `make setup`: the CPU torch is in place and nothing broke it."""

import importlib.util
import sys

import torch

FORBIDDEN = ("torchvision", "torchaudio", "torchcodec")


def main() -> int:
    problems = []
    if not torch.__version__.startswith("2.13.0"):
        problems.append(f"torch {torch.__version__} is installed; xr-nemo is tested with torch 2.13.0")
    present = [name for name in FORBIDDEN if importlib.util.find_spec(name) is not None]
    if present:
        problems.append(
            f"{', '.join(present)} installed: PyPI's wheels fail beside the CPU torch; "
            f"run `pip uninstall {' '.join(present)}`"
        )
    for problem in problems:
        print(f"[setup] error: {problem}", file=sys.stderr)
    if not problems:
        print(f"[setup] ok: torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
