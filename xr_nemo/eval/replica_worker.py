"""One evaluation replica: `python -m xr_nemo.eval.replica_worker CONFIG RANK N`, started by
`xr_nemo.eval.replicas.run_replicas`. Replica r generates items i with i mod N = r into its own part file
(see `xr_nemo.eval.predictions`) and exits. A module of its own so that `replicas` (imported by `run`)
does not import `run` back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from xr_nemo.config.overrides import load_config
from xr_nemo.config.schema import EvalConfig
from xr_nemo.errors import XrNemoError
from xr_nemo.eval.run import generate, load_items
from xr_nemo.tasks.benchmarks import get_benchmark


def _replica_main(config_path: str, rank: str, replicas: str) -> None:
    config = load_config(config_path, EvalConfig)
    loaded = load_items(config, [get_benchmark(name) for name in config.benchmarks])
    generate(config, Path(config.model), Path(config.out_dir), loaded, replica=(int(rank), int(replicas)))


if __name__ == "__main__":
    try:
        _replica_main(*sys.argv[1:4])
    except XrNemoError as error:
        print(f"xr-nemo eval replica {sys.argv[2]}: error: {error}", file=sys.stderr)
        sys.exit(2)
