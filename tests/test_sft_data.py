"""SFT data path: schemas, targets that end in a short final answer, bad input with file:line, loss masks
through the chat template, packing, the per-step batch plans (sequences or samples per step, dealt to
data-parallel ranks), config overrides and learning-rate schedules."""

import json
import math
import re

import numpy as np
import pytest
import torch

from xr_nemo.config.overrides import apply_overrides
from xr_nemo.config.schema import DataConfig, SchedulerConfig, SFTConfig
from xr_nemo.data.batches import SampleBatches, build_plan, deal
from xr_nemo.data.conversation import prepare, reasoning_format
from xr_nemo.data.packing import best_fit_decreasing, collate
from xr_nemo.data.prompt_format import training_prompt
from xr_nemo.data.records import DataError, Record, read_records
from xr_nemo.data.tokenize import tokenize_dataset, tokenize_messages
from xr_nemo.errors import ConfigError
from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer, save_tokenizer
from xr_nemo.training.schedule import learning_rate

OPEN_THOUGHTS = {
    "system": "Think first.",
    "conversations": [
        {"from": "user", "value": "What is 2+3?"},
        {
            "from": "assistant",
            "value": "<|begin_of_thought|>\n2 plus 3 is 5.\n<|end_of_thought|>\n\n"
            "<|begin_of_solution|>\nThe answer is 5.\n<|end_of_solution|>",
        },
    ],
}
MESSAGES = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
PROMPT_RESPONSE = {"prompt": "Name a prime.", "response": "7"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(build_tokenizer(), directory)
    return directory


def write_jsonl(path, rows):
    path.write_bytes(
        b"".join(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode() for row in rows)
    )
    return path


def test_three_schemas_become_the_papers_training_format():
    """The paper's format by default: no system turn, the question in the training template, the target
    `<think>\n…\n</think>\n\n<answer>…</answer>`; `data.template=none` keeps the turns as they are."""
    ot = prepare(Record("f:1", OPEN_THOUGHTS), "auto")
    assert [m["role"] for m in ot] == ["user", "assistant"]
    assert ot[0]["content"] == training_prompt("What is 2+3?")
    assert ot[1]["content"] == "<think>\n2 plus 3 is 5.\n</think>\n\n<answer>The answer is 5.</answer>"
    direct = prepare(Record("f:2", MESSAGES), "auto")
    assert direct[1]["content"] == "<answer>Hello!</answer>"  # no thoughts: a direct answer
    again = prepare(Record("f:4", {"messages": ot}), "auto")  # data already in the format: unchanged
    assert again == ot
    tagged = {"prompt": "q", "response": "<think>t</think>So B.\n<answer>B</answer>"}
    assert (
        prepare(Record("f:5", tagged), "auto")[1]["content"] == "<think>\nt\n</think>\n\n<answer>B</answer>"
    )
    as_is = prepare(Record("f:1", OPEN_THOUGHTS), "auto", template="none")
    assert [m["role"] for m in as_is] == ["system", "user", "assistant"]
    assert as_is[2]["content"] == "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is 5."
    replaced = prepare(Record("f:3", PROMPT_RESPONSE), "auto", system_prompt="Be brief.")
    assert replaced[0] == {"role": "system", "content": "Be brief."}
    assert reasoning_format("<think>a</think> b", answer_tags=False) == "<think>\na\n</think>\n\nb"


THOUGHT = "<|begin_of_thought|>\nAdd them.\n<|end_of_thought|>\n\n"


def _solution(text: str) -> str:
    return f"{THOUGHT}<|begin_of_solution|>\n{text}\n<|end_of_solution|>"


@pytest.mark.parametrize(
    ("response", "target"),
    [
        (  # the solution stays; its boxed value is the answer
            _solution("2 + 3 = 5, so the answer is \\boxed{5}."),
            "<think>\nAdd them.\n</think>\n\n2 + 3 = 5, so the answer is \\boxed{5}.\n\n<answer>5</answer>",
        ),
        (  # the last box, nested braces kept
            _solution("First \\boxed{3}; in fact $x = \\boxed{\\frac{1}{2}}$"),
            "<think>\nAdd them.\n</think>\n\nFirst \\boxed{3}; in fact $x = \\boxed{\\frac{1}{2}}$"
            "\n\n<answer>\\frac{1}{2}</answer>",
        ),
        (  # a last box never closed, or empty, is passed over
            _solution("\\boxed{7} then \\boxed{} then \\boxed{8"),
            "<think>\nAdd them.\n</think>\n\n\\boxed{7} then \\boxed{} then \\boxed{8\n\n<answer>7</answer>",
        ),
        (  # no box (code): the solution is the answer
            _solution("```python\nprint(5)\n```"),
            "<think>\nAdd them.\n</think>\n\n<answer>```python\nprint(5)\n```</answer>",
        ),
        (  # tagged (distilled traces): the last tagged answer alone, as before
            "<think>\nt\n</think>\nSo C, \\boxed{C}.\n<answer>C</answer>",
            "<think>\nt\n</think>\n\n<answer>C</answer>",
        ),
        (  # no thoughts (direct-answer data): the same rule
            "The sum is \\boxed{12}.",
            "The sum is \\boxed{12}.\n\n<answer>12</answer>",
        ),
    ],
    ids=["boxed", "last-box-nested", "unclosed-and-empty-boxes", "code", "tagged", "direct"],
)
def test_targets_end_in_the_final_answer(response, target):
    """Hand-checked targets: `<answer>` holds the final answer only, so that it fits the few tokens left
    after a forced exit."""
    record = Record("f:1", {"prompt": "What is 2+3?", "response": response})
    assert prepare(record, "auto")[-1]["content"] == target


def test_every_bundled_openthoughts_target_answers_with_its_boxed_value():
    """docs/sft.md: all 48 records of the bundled OpenThoughts sample end in a boxed answer, which becomes
    the `<answer>`; evaluation's reader reads it from the target."""
    from xr_nemo.recipes.tiny_cpu import SAMPLE_DATA
    from xr_nemo.rewards.extract import final_answer

    records = list(read_records(str(SAMPLE_DATA)))
    boxed = [re.findall(r"\\boxed\{(-?\d+)\}", r.fields["conversations"][-1]["value"]) for r in records]
    targets = [prepare(record, "auto")[-1]["content"] for record in records]
    assert len(records) == 48 and all(len(values) == 1 for values in boxed)
    assert all(t.endswith(f"}}.\n\n<answer>{v[0]}</answer>") for t, v in zip(targets, boxed, strict=True))
    assert [final_answer(t) for t in targets] == [v[0] for v in boxed]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (b"{not json\n", "malformed JSON"),
        ({"conversations": []}, "non-empty list"),
        ({"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}, "unknown role"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "expected 'user'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "end with an assistant"),
        ({"text": "no schema"}, "cannot tell the schema"),
        (b"\xff\xfe bad bytes\n", "not UTF-8"),
        ({"prompt": "x", "response": 3}, "must be a string"),
    ],
)
def test_bad_records_stop_with_file_and_line(tmp_path, tokenizer_dir, row, message):
    path = write_jsonl(tmp_path / "data.jsonl", [OPEN_THOUGHTS, row, MESSAGES])
    data = DataConfig(train=str(path), num_workers=1)
    with pytest.raises(DataError) as error:
        tokenize_dataset(str(path), "train", tokenizer_dir, data, tmp_path / "cache", progress=False)
    assert message in error.value.what
    assert error.value.where.endswith("data.jsonl:2")
    assert "data.on_error=skip" in error.value.render()


def test_bad_records_are_skipped_and_counted(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "data.jsonl", [OPEN_THOUGHTS, b"{oops\n", {"messages": []}, MESSAGES])
    data = DataConfig(train=str(path), on_error="skip", num_workers=1)
    dataset = tokenize_dataset(str(path), "train", tokenizer_dir, data, tmp_path / "cache", progress=False)
    assert len(dataset) == 2
    assert (dataset.stats.records, dataset.stats.skipped_bad) == (4, 2)
    assert dataset.stats.bad_examples[0].startswith(f"{path}:2")


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A one"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A two"},
    ]
    ids, mask = tokenize_messages(tokenizer, messages)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "A one<|im_end|>\nA two<|im_end|>\n"


def test_tokenisation_is_cached_and_overlong_samples_truncate_or_drop(tmp_path, tokenizer_dir):
    long = {"prompt": "Q", "response": "word " * 200}
    path = write_jsonl(tmp_path / "data.jsonl", [MESSAGES, long])
    truncate = DataConfig(train=str(path), max_length=256, num_workers=1)  # the prompt takes ~130
    first = tokenize_dataset(str(path), "train", tokenizer_dir, truncate, tmp_path / "cache", progress=False)
    assert first.lengths.max() == 256 and first.stats.truncated == 1
    cached = list((tmp_path / "cache").glob("tokenized-*/chunk_*.npz"))
    mtime = cached[0].stat().st_mtime_ns
    again = tokenize_dataset(str(path), "train", tokenizer_dir, truncate, tmp_path / "cache", progress=False)
    assert np.array_equal(again.ids, first.ids) and cached[0].stat().st_mtime_ns == mtime
    drop = DataConfig(train=str(path), max_length=256, overlong="drop", num_workers=1)
    dropped = tokenize_dataset(str(path), "train", tokenizer_dir, drop, tmp_path / "cache", progress=False)
    assert len(dropped) == 1 and dropped.stats.dropped_overlong == 1


def test_best_fit_decreasing_fills_bins_and_keeps_every_sample():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in np.clip(rng.lognormal(5, 1, 2000), 10, 4096)]
    bins = best_fit_decreasing(lengths, 4096)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 4096 for b in bins)
    assert sum(lengths) / (4096 * len(bins)) > 0.98


def test_packed_sequence_restarts_positions_and_bounds_every_sample_and_the_padding():
    first = (np.array([5, 6, 7, 8]), np.array([0, 0, 1, 1], bool))
    second = (np.array([9, 10, 11]), np.array([0, 1, 1], bool))
    batch = collate([[first, second]], pad_id=0, length=7)
    assert batch["tokens"].tolist() == [[5, 6, 7, 9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, 8, 10, 11, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 1, 1, 0, 0]]
    assert batch["position_ids"].shape == (3, 1, 7)
    assert (batch["position_ids"][:, 0] == torch.tensor([0, 1, 2, 0, 1, 0, 0])).all()
    params = batch["packed_seq_params"]
    assert params.qkv_format == "sbhd"
    assert params.cu_seqlens_q.tolist() == params.cu_seqlens_kv.tolist() == [0, 3, 5, 7]
    assert params.cu_seqlens_q.dtype == torch.int32
    assert params.max_seqlen_q == params.max_seqlen_kv == 3


def test_packed_rows_are_bounded_over_the_flattened_batch_and_no_tensor_is_seq_by_seq():
    def sample(length):
        return np.arange(1, length + 1), np.ones(length, bool)

    batch = collate([[sample(4), sample(3)], [sample(2)], [sample(6), sample(4)]], pad_id=0, multiple_of=4)
    width = batch["tokens"].shape[1]
    assert width == 8
    # row 0: samples of 3 and 2 positions, then padding; row 1: 1, then padding; row 2: 5 and 3, full
    assert batch["packed_seq_params"].cu_seqlens_q.tolist() == [0, 3, 5, 8, 9, 16, 21, 24]
    assert batch["packed_seq_params"].max_seqlen_q == 7
    tensors = [value for value in batch.values() if isinstance(value, torch.Tensor)]
    assert all(width not in t.shape or t.shape.count(width) == 1 for t in tensors)


def test_a_row_without_samples_is_padding_that_trains_nothing():
    sample = (np.array([5, 6, 7]), np.array([0, 1, 1], bool))
    batch = collate([[sample], []], pad_id=0)
    assert batch["tokens"].tolist() == [[5, 6], [0, 0]]
    assert batch["loss_mask"].tolist() == [[1, 1], [0, 0]]
    assert batch["packed_seq_params"].cu_seqlens_q.tolist() == [0, 2, 4]
    assert (int(batch["num_samples"]), int(batch["real_tokens"])) == (1, 2)
    empty = collate([[], []], pad_id=0, multiple_of=4)  # a rank's made-up micro-batch
    assert empty["tokens"].shape == (2, 4) and empty["loss_mask"].sum() == 0
    assert empty["packed_seq_params"].cu_seqlens_q.tolist() == [0, 4, 8]


@pytest.mark.parametrize("samples", [None, 3])
def test_batch_plans_are_a_function_of_the_step(samples):
    lengths = np.array([30, 20, 50, 10, 40, 60, 25, 35])
    sizes = {"global_batch_size": None if samples else 2, "global_batch_samples": samples}
    plan = build_plan(lengths, packing=True, seq_length=64, seed=3, **sizes)
    again = build_plan(lengths, packing=True, seq_length=64, seed=3, **sizes)
    assert [plan.global_batch(s) for s in range(6)] == [again.global_batch(s) for s in range(6)]
    epoch = [i for s in range(plan.steps_per_epoch) for seq in plan.global_batch(s) for i in seq]
    assert len(set(epoch)) == len(epoch)
    assert plan.global_batch(0) != plan.global_batch(plan.steps_per_epoch)  # reshuffled per epoch
    assert plan.position(plan.steps_per_epoch) == plan.epoch_size  # an epoch's data ends with its steps
    ranks = [plan.microbatches(1, r, 2, 1) for r in range(2)]
    assert [seq for r in ranks for micro in r for seq in micro if seq] == plan.global_batch(1)


@pytest.mark.parametrize(("samples", "per_step", "steps"), [(6, 6, 1), (8, 4, 2), (9, 4, 3), (9, 8, 2)])
def test_steps_hold_global_batch_samples_and_an_epoch_ends_with_the_rest(samples, per_step, steps):
    lengths = 3 + 4 * (np.arange(samples) % 5)  # 3 to 19 tokens: 1 to 5 samples per sequence
    plan = build_plan(lengths, packing=True, seq_length=20, seed=0, global_batch_samples=per_step)
    assert plan.steps_per_epoch == steps
    counts = [sum(len(seq) for seq in plan.global_batch(s)) for s in range(2 * steps)]
    assert counts == 2 * [*[per_step] * (steps - 1), samples - per_step * (steps - 1)]
    epoch = sorted(i for s in range(steps) for seq in plan.global_batch(s) for i in seq)
    assert epoch == list(range(samples))
    # the data position counts those samples: an epoch ends where its data does
    assert [plan.position(s + 1) - plan.position(s) for s in range(2 * steps)] == counts
    assert plan.epoch_size == samples and plan.position(steps) == samples


def test_a_steps_samples_are_packed_into_as_many_sequences_as_they_need():
    """One step of all six samples, spans 9, 7, 5, 4, 3, 2 into 10 positions, packed by hand with best fit
    decreasing: {9}, {7, 3}, {5, 4}, {2} — whatever the shuffle."""
    lengths = np.array([4, 8, 3, 10, 6, 5])  # spans 3, 7, 2, 9, 5, 4
    for seed in range(3):
        plan = build_plan(lengths, packing=True, seq_length=10, seed=seed, global_batch_samples=6)
        assert isinstance(plan, SampleBatches)
        packed = sorted(sorted(seq) for seq in plan.global_batch(0))
        assert packed == [[0, 1], [2], [3], [4, 5]]
    unpacked = build_plan(lengths, packing=False, seq_length=10, seed=0, global_batch_samples=6)
    assert sorted(unpacked.global_batch(0)) == [[0], [1], [2], [3], [4], [5]]


@pytest.mark.parametrize(
    ("dp_size", "micro", "expected"),
    [
        (1, 1, [[[[0]], [[1, 2]], [[3]]]]),
        (2, 1, [[[[0]], [[1, 2]]], [[[3]], [[]]]]),  # rank 1 makes up its second micro-batch
        (2, 2, [[[[0], [1, 2]]], [[[3], []]]]),
        (4, 1, [[[[0]]], [[[1, 2]]], [[[3]]], [[[]]]]),
        (3, 2, [[[[0], [1, 2]]], [[[3], []]], [[[], []]]]),
    ],
)
def test_every_rank_gets_the_same_number_of_full_micro_batches(dp_size, micro, expected):
    sequences = [[0], [1, 2], [3]]
    assert [deal(sequences, rank, dp_size, micro) for rank in range(dp_size)] == expected


def test_too_little_data_for_one_global_batch_names_the_key():
    with pytest.raises(ConfigError, match=r"3 sample\(s\), fewer than one global batch") as error:
        build_plan([5, 5, 5], packing=True, seq_length=8, seed=0, global_batch_samples=4)
    assert error.value.where == "data.train / trainer.global_batch_samples"
    with pytest.raises(ConfigError, match=r"2 sequence\(s\) after packing") as error:
        build_plan([5, 5, 5], packing=True, seq_length=8, seed=0, global_batch_size=3)
    assert "data.packing=false" in error.value.fix


def test_overrides_follow_hydra_grammar_and_reject_unknown_keys():
    config = apply_overrides(
        SFTConfig(),
        ["model.hf_dir=/m", "data.train=/d", "trainer.max_steps=200", "parallel.tp=4", "run.dir=/r"],
    )
    assert (config.trainer.max_steps, config.parallel.tensor_parallel, config.run.dir) == (200, 4, "/r")
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.max_stepz'") as error:
        apply_overrides(SFTConfig(), ["trainer.max_stepz=3"])
    assert "trainer.max_steps" in error.value.fix
    with pytest.raises(ConfigError, match="required config value"):
        apply_overrides(SFTConfig(), [])


def test_learning_rate_schedules():
    decay = SchedulerConfig(name="epoch_decay", epoch_decay=0.8)
    assert [learning_rate(s, 1.0, decay, 12, s // 4) for s in (0, 3, 4, 8, 11)] == pytest.approx(
        [1, 1, 0.8, 0.64, 0.64]
    )
    cosine = SchedulerConfig(name="cosine", warmup_steps=2, min_lr=0.1)
    assert learning_rate(0, 1.0, cosine, 12, 0) == pytest.approx(0.5)
    assert learning_rate(2, 1.0, cosine, 12, 0) == pytest.approx(1.0)
    assert learning_rate(7, 1.0, cosine, 12, 1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))
    )
    assert learning_rate(12, 1.0, cosine, 12, 3) == pytest.approx(0.1)
    warm = SchedulerConfig(name="constant", warmup_fraction=0.25)
    assert [learning_rate(s, 1.0, warm, 8, 0) for s in (0, 1, 2)] == pytest.approx([0.5, 1, 1])


def test_hub_free_reader_reports_missing_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(read_records(str(tmp_path / "absent.jsonl")))


def test_the_loss_mask_covers_exactly_the_assistant_turn_with_either_vocabulary(any_tokenizer):
    """Chat rendering and loss masks with the tiny and the real Qwen2.5 vocabulary: the trained tokens
    decode to the assistant turn in the paper's format and its end-of-turn token, nothing else."""
    from xr_nemo.generation.engine import chat_stop_ids

    messages = prepare(Record("f:1", OPEN_THOUGHTS), "auto")
    ids, mask = tokenize_messages(any_tokenizer, messages)
    rendered = any_tokenizer.apply_chat_template(messages, tokenize=False)
    assert any_tokenizer.decode(ids) == rendered
    trained = any_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained.startswith(messages[-1]["content"]) and trained.rstrip("\n").endswith("<|im_end|>")
    assert trained.removeprefix(messages[-1]["content"]).strip() == "<|im_end|>"
    prompt = any_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert training_prompt("What is 2+3?") in prompt and "Think first." not in prompt  # no system turn
    stops = chat_stop_ids(any_tokenizer)
    assert any_tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    assert any_tokenizer.convert_tokens_to_ids("<|endoftext|>") in stops
