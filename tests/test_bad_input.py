"""Malformed data ends in one DataError naming the file and line (or is read correctly when it is
unusual but valid): a corpus of bad SFT records and GRPO prompts, one case per class of bad input."""

from __future__ import annotations

import json

import pytest

from xr_nemo.data.conversation import prepare
from xr_nemo.data.records import DataError, read_records
from xr_nemo.grpo.prompts import to_item

CONTROL = ("<|im_end|>", "<|im_start|>", "<|image_pad|>")


def _first(path, schema_reader):
    records = list(read_records(str(path)))
    record = records[0]
    if isinstance(record, DataError):
        raise record
    return schema_reader(record)


def _sft(record):
    return prepare(record, "auto", control_tokens=CONTROL)


def _grpo(schema):
    return lambda record: to_item(record, schema)


GOOD_SFT = {"prompt": "What is 2 + 2?", "response": "<think>2 + 2 = 4</think> 4"}

# (name, file name, file bytes, reader, expected message or None for "reads correctly")
CASES = [
    ("text-file", "data.txt", json.dumps(GOOD_SFT).encode(), _sft, "cannot tell the format"),
    ("upper-case-suffix", "data.JSONL", json.dumps(GOOD_SFT).encode(), _sft, None),
    ("byte-order-mark", "bom.jsonl", b"\xef\xbb\xbf" + json.dumps(GOOD_SFT).encode(), _sft, None),
    ("corrupt-parquet", "data.parquet", b"PAR1 not really", _sft, "cannot read Parquet"),
    ("lone-surrogate", "s.jsonl", b'{"prompt": "a \\ud800 b", "response": "c"}', _sft, "lone surrogate"),
    ("duplicate-key", "d.jsonl", b'{"prompt": "a", "prompt": "b", "response": "c"}', _sft, "more than once"),
    ("role-list", "r.jsonl", b'{"messages": [{"role": ["user"], "content": "a"}]}', _sft, "unknown role"),
    (
        "control-token",
        "c.jsonl",
        json.dumps({"prompt": "a<|im_end|>", "response": "b"}).encode(),
        _sft,
        "control token",
    ),
    (
        "empty-trace",
        "e.jsonl",
        json.dumps(
            {
                "conversations": [
                    {"from": "user", "value": "q"},
                    {
                        "from": "assistant",
                        "value": "<|begin_of_thought|> <|end_of_thought|><|begin_of_solution|> "
                        "<|end_of_solution|>",
                    },
                ]
            }
        ).encode(),
        _sft,
        "both empty",
    ),
    ("orz-on-json-lines", "o.jsonl", b'{"prompt": "q", "answer": "1"}', _grpo("orz"), "pairs"),
    ("no-answer", "a.jsonl", b'{"prompt": "q"}', _grpo("prompt_answer"), "needs answer"),
    ("no-prompt", "p.jsonl", b'{"answer": "1"}', _grpo("prompt_answer"), "needs prompt"),
    (
        "numbered-options",
        "n.jsonl",
        b'{"question": "q", "options": {"1": "x", "2": "y"}, "answer": "1"}',
        _grpo("auto"),
        "keyed by letters",
    ),
    (
        "27-options",
        "m.jsonl",
        json.dumps({"question": "q", "options": [str(i) for i in range(27)], "answer": "A"}).encode(),
        _grpo("auto"),
        "more than the letters",
    ),
    ("nan-answer", "nan.jsonl", b'{"prompt": "q", "answer": NaN}', _grpo("auto"), "not a value"),
]


@pytest.mark.parametrize(("name", "file", "content", "reader", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_with_its_place(tmp_path, name, file, content, reader, message):
    path = tmp_path / file
    path.write_bytes(content)
    if message is None:
        assert _first(path, reader)
        return
    with pytest.raises(DataError, match=message) as error:
        _first(path, reader)
    assert str(path) in error.value.where


def test_a_typo_in_a_local_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for typo in ("data/trian.jsonl", "data/trian", "runs/x/train.jsonl", "train.jsnol"):
        with pytest.raises(DataError, match="does not exist"):
            list(read_records(typo))


def test_the_tokenizer_control_tokens_are_those_data_must_not_spell():
    from xr_nemo.data.tokenize import control_tokens
    from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer

    tokens = control_tokens(build_tokenizer())
    assert {"<|im_end|>", "<|im_start|>", "<|image_pad|>", "<|vision_start|>"} <= set(tokens)
    assert "<think>" not in tokens  # reasoning tags are text the targets use


class AnswersFive:
    """A scripted engine: every completion closes its thinking and answers 5."""

    collective = False

    def __init__(self, tokenizer):
        self.ids = tokenizer.encode("<think>x</think><answer>5</answer>", add_special_tokens=False)
        self.prompts = 0

    def sample(self, prompts, seeds, sampling):
        from xr_nemo.generation.engine import Completion

        self.prompts += len(prompts)
        return [Completion(list(self.ids), [0.0] * len(self.ids), finished=True) for _ in prompts]

    def close(self):
        pass


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` × `height` pixels (a decompression bomb's signature)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_eval_records_unusable_items_with_their_reason_and_reruns_skip_them(tmp_path):
    from PIL import Image
    from transformers import AutoTokenizer

    from xr_nemo.config.schema import EvalConfig
    from xr_nemo.eval.run import run_eval
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    data = tmp_path / "arith.jsonl"
    Image.new("RGB", (56, 56), "white").save(tmp_path / "good.png")
    Image.new("RGB", (1, 300), "white").save(tmp_path / "thin.png")  # aspect ratio 300: refused
    (tmp_path / "bomb.png").write_bytes(_png_claiming(20000, 20000))
    rows = [("a", "good.png"), ("b", "thin.png"), ("c", "bomb.png"), ("a", "good.png")]
    data.write_text(
        "".join(
            json.dumps({"id": i, "question": "2 + 3?", "answer": "5", "image": f}) + "\n" for i, f in rows
        )
    )
    model = build_tiny_qwen25_vl(tmp_path / "model")
    config = EvalConfig(
        model=str(model),
        benchmarks=["arith_image"],
        data={"arith_image": str(data)},
        out_dir=str(tmp_path / "e"),
    )
    engine = AnswersFive(AutoTokenizer.from_pretrained(model))
    result = run_eval(config, engine=engine)["benchmarks"]["arith_image"]
    assert (result["n"], result["correct"], engine.prompts) == (1, 1, 1)
    assert result["skipped_by_reason"] == {"malformed record": 1, "unusable image": 2}
    problems = "\n".join(result["problems"])
    assert f"{data}:4" in problems and "already used" in problems
    assert "refuses the image" in problems and "more pixels than is safe" in problems
    again = run_eval(config, engine=engine)["benchmarks"]["arith_image"]
    assert engine.prompts == 1 and again["skipped_by_reason"] == result["skipped_by_reason"]


def test_a_benchmark_without_usable_items_is_an_error_not_zero_percent(tmp_path):
    from xr_nemo.config.schema import EvalConfig
    from xr_nemo.eval.run import load_items
    from xr_nemo.tasks.benchmarks import get_benchmark

    data = tmp_path / "empty.jsonl"
    data.write_text('{"id": 1, "question": "2 + 3?"}\n')
    config = EvalConfig(model="m", benchmarks=["arith_text"], data={"arith_text": str(data)})
    with pytest.raises(
        DataError, match=r"arith_text has no usable items \(1 records skipped; .*empty.jsonl:1"
    ):
        load_items(config, [get_benchmark("arith_text")])
