"""How well the closed-question rule (`xr_nemo.tasks.image_benchmarks.closed_question`), which VQA-RAD's
hub layout needs since it has no `answer_type`, agrees with the release's own `answer_type`; beside it,
the yes/no-only rule it replaced. Results are recorded in `docs/eval.md`.

    python benchmarks/vqa_rad_closed_rule.py "VQA_RAD Dataset Public.json" [--split test|train|all]

Reads a JSON list of `{question, answer, answer_type, phrase_type}` records: the release file, or a copy
of its records (e.g. MEVF's `data_RAD/testset.json`). The release's test set is its `test_freeform` and
`test_para` phrase types; `frame` questions (templated, training only) are left out, as the benchmark
reads no training questions. A file whose phrase types name no split is read whole.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from xr_nemo.tasks.image_benchmarks import closed_question


def in_split(phrase_type: str, split: str) -> bool:
    if phrase_type == "frame":
        return False
    return split == "all" or phrase_type.startswith("test") == (split == "test")


def yes_no(question: str, answer: str) -> bool:
    return answer.strip().lower() in ("yes", "no")


def agreement(records: list[dict], rule) -> Counter:
    """(rule says closed, release says closed) → count."""
    return Counter(
        (rule(r["question"], str(r["answer"])), r["answer_type"].strip().upper() == "CLOSED") for r in records
    )


def report(name: str, counts: Counter) -> str:
    total = sum(counts.values())
    agree = counts[True, True] + counts[False, False]
    return (
        f"{name}: {agree}/{total} agree ({100 * agree / total:.1f} %); both closed {counts[True, True]}, "
        f"both open {counts[False, False]}, rule closed / release open {counts[True, False]}, "
        f"rule open / release closed {counts[False, True]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--split", choices=("test", "train", "all"), default="test")
    args = parser.parse_args()
    records = json.loads(args.path.read_text(encoding="utf-8"))
    split = args.split
    if any(str(r.get("phrase_type", "")).startswith("test") for r in records):
        records = [r for r in records if in_split(str(r.get("phrase_type", "")), split)]
    else:
        records, split = [r for r in records if r.get("phrase_type") != "frame"], "the whole file"
    print(f"{args.path} ({split}): {len(records)} questions")
    print(report("closed-question rule", agreement(records, closed_question)))
    print(report("yes/no only", agreement(records, yes_no)))
    for record in records:
        if closed_question(record["question"], str(record["answer"])) != (
            record["answer_type"].strip().upper() == "CLOSED"
        ):
            print(f"  differs: {record['answer_type'].strip()} | {record['question']} | {record['answer']}")


if __name__ == "__main__":
    main()
