"""Small local copies of every registered benchmark, each in its release's own schema and file format
(JSONL, JSON, CSV, Parquet with embedded image bytes), with images drawn here. Every question is unique
and carries its own tag, so a scripted engine can answer it; `TRUTH` holds a right and a wrong answer
per question. A few records are broken on purpose (no gold answer, a missing or an undecodable image);
`VALID` and `SKIPPED` say what a reader must make of each file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

Truth = dict[str, tuple[str, str]]  # question text → (a right answer, a wrong answer)


def _png(size: tuple[int, int], shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade % 256, (3 * shade) % 256, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _save(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.name


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _wrong_letter(letter: str, options: str = "ABCD") -> str:
    return options[(options.index(letter) + 1) % len(options)]


def _gsm8k(root: Path, truth: Truth) -> Path:
    rows = []
    for i in range(6):
        question = f"[gsm8k {i}] Tom has {i} apples and buys {i + 3} more. How many?"
        rows.append({"question": question, "answer": f"{i} + {i + 3}\n#### {2 * i + 3}"})
        truth[question] = (str(2 * i + 3), "-1")
    rows.append({"question": "[gsm8k bad] No final line", "answer": "just text"})
    return _jsonl(root / "gsm8k.jsonl", rows)


def _medqa(root: Path, truth: Truth) -> Path:
    rows = []
    for i in range(6):
        question = f"[medqa {i}] A {30 + i}-year-old presents with chest pain. Best next step?"
        gold = "ABCD"[i % 4]
        rows.append(
            {
                "question": question,
                "options": dict(zip("ABCD", ["ECG", "Troponin", "Aspirin", "CT"], strict=True)),
                "answer_idx": gold,
            }
        )
        truth[question] = (gold, _wrong_letter(gold))
    rows.append({"question": "[medqa bad] Missing answer", "options": {"A": "x", "B": "y"}})
    return _jsonl(root / "medqa.jsonl", rows)


def _medqa_5op(root: Path, truth: Truth) -> Path:
    """BigBio's source layout: options as a list of {key, value}."""
    rows = []
    for i in range(6):
        question = f"[medqa5 {i}] Which drug is first line for condition {i}?"
        gold = "ABCDE"[i % 5]
        options = [{"key": k, "value": v} for k, v in zip("ABCDE", ["a", "b", "c", "d", "e"], strict=True)]
        rows.append({"question": question, "options": options, "answer_idx": gold, "answer": gold.lower()})
        truth[question] = (gold, _wrong_letter(gold, "ABCDE"))
    return _jsonl(root / "medqa_5op.jsonl", rows)


def _mmlu_pro(root: Path, truth: Truth) -> Path:
    rows = []
    for i in range(8):  # answered by option text; the wrong one is the next option's
        question = f"[mmlu_pro {i}] Question about {'health' if i % 2 else 'law'}?"
        options = ["alpha", "beta", "gamma", "delta", "epsilon"]
        index = i % 5
        rows.append(
            {
                "question_id": 100 + i,
                "question": question,
                "options": options,
                "answer": "ABCDE"[index],
                "category": "health" if i % 2 else "law",
            }
        )
        truth[question] = (options[index], options[(index + 1) % 5])
    return _jsonl(root / "mmlu_pro.jsonl", rows)


def _medmcqa(root: Path, truth: Truth) -> Path:
    rows = []
    for i in range(6):
        question = f"[medmcqa {i}] Which nerve supplies muscle {i}?"
        rows.append(
            {
                "id": f"m{i}",
                "question": question,
                "opa": "Radial",
                "opb": "Ulnar",
                "opc": "Median",
                "opd": "Axillary",
                "cop": i % 4,
                "subject_name": "Anatomy",
            }
        )
        truth[question] = ("ABCD"[i % 4], "ABCD"[(i + 1) % 4])
    rows.append(
        {"id": "bad", "question": "[medmcqa bad]", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 7}
    )
    return _jsonl(root / "medmcqa.jsonl", rows)


def _medmcqa_release(root: Path, truth: Truth) -> Path:
    """The original release's folder: train.json, dev.json and test.json, JSON lines in files named
    .json, `cop` counted from 1 (test has none). Only dev.json (the validation split) is read; train and
    test questions are not in the truth, so reading them would fail the run."""
    folder = root / "medmcqa_release"
    options = {"opa": "Radial", "opb": "Ulnar", "opc": "Median", "opd": "Axillary"}
    dev = []
    for i in range(6):
        question = f"[medmcqa_release {i}] Which nerve supplies muscle {i}?"
        dev.append(
            {"id": f"r{i}", "question": question, **options, "cop": i % 4 + 1, "subject_name": "Anatomy"}
        )
        truth[question] = ("ABCD"[i % 4], "ABCD"[(i + 1) % 4])
    dev.append({"id": "r-five", "question": "[medmcqa_release five] out of range", **options, "cop": 5})
    train = [{"id": "t0", "question": "[medmcqa_release train] never asked", **options, "cop": 2}]
    test = [{"id": "x0", "question": "[medmcqa_release test] never asked", **options}]
    for name, rows in (("dev", dev), ("train", train), ("test", test)):
        _jsonl(folder / f"{name}.json", rows)
    return folder


def _pubmedqa(root: Path, truth: Truth) -> Path:
    rows = []
    for i in range(6):  # answered in words
        question = f"[pubmedqa {i}] Does treatment {i} reduce mortality?"
        decision = ["yes", "no", "maybe"][i % 3]
        rows.append(
            {
                "pubid": 1000 + i,
                "question": question,
                "context": {"contexts": [f"Background {i}.", "Results were mixed."]},
                "final_decision": decision,
            }
        )
        truth[question] = (decision, "no" if decision != "no" else "yes")
    return _jsonl(root / "pubmedqa.jsonl", rows)


def _image_struct(size: tuple[int, int], shade: int) -> dict:
    return {"bytes": _png(size, shade), "path": f"{shade}.png"}


def _mmmu(root: Path, truth: Truth) -> Path:
    """Parquet as on the hub: images as {bytes, path}; two health subjects, one other; one open question
    and one question with two images of different sizes."""
    rows = []
    subjects = ["Clinical_Medicine", "Art", "Pharmacy", "Art", "Clinical_Medicine"]
    for i, subject in enumerate(subjects):
        question = f"<image 1> [mmmu {i}] What does the figure of {subject} show?"
        row = {
            "id": f"validation_{subject}_{i + 1}",
            "question": question,
            "options": "['one', 'two', 'three', 'four']",
            "answer": "ABCD"[i % 4],
            "question_type": "multiple-choice",
            "image_1": _image_struct((56 + 28 * i, 56), i),
            "image_2": None,
        }
        truth[question] = ("ABCD"[i % 4], _wrong_letter("ABCD"[i % 4]))
        rows.append(row)
    rows[1]["image_2"] = _image_struct((84, 112), 9)
    rows[1]["question"] = rows[1]["question"].replace("<image 1>", "<image 1> <image 2>")
    truth[rows[1]["question"]] = truth.pop(next(q for q in truth if "[mmmu 1]" in q))
    open_question = "<image 1> [mmmu open] How many degrees is the angle in the figure of Pharmacy?"
    rows.append(
        {
            "id": "validation_Pharmacy_9",
            "question": open_question,
            "options": "[]",
            "answer": "42",
            "question_type": "open",
            "image_1": _image_struct((56, 84), 4),
            "image_2": None,
        }
    )
    truth[open_question] = ("42", "17")
    folder = root / "mmmu"
    _parquet(folder / "validation-00000-of-00001.parquet", rows)
    for split, answer in (("dev", "A"), ("test", "?")):  # hub layout: other splits beside validation
        other = {
            **rows[0],
            "id": f"{split}_Art_1",
            "question": f"<image 1> [mmmu {split}] never asked",
            "answer": answer,
        }
        _parquet(folder / f"{split}-00000-of-00001.parquet", [other])
    return folder


def _mmmu_pro(root: Path, truth: Truth) -> Path:
    rows = []
    letters = "ABCDEFGHIJ"
    for i, subject in enumerate(["Clinical_Medicine", "History", "Public_Health", "History"]):
        question = f"<image 1> [mmmu_pro {i}] Which of the ten statements about {subject} holds?"
        gold = letters[(3 * i) % 10]
        options = str([f"statement {k}" for k in range(10)])
        rows.append(
            {
                "id": f"test_{subject}_{i}",
                "question": question,
                "options": options,
                "answer": gold,
                "subject": subject,
                "image_1": _image_struct((56, 56), 20 + i),
            }
        )
        truth[question] = (gold, letters[(3 * i + 1) % 10])
    return _parquet(root / "mmmu_pro" / "test-00000-of-00001.parquet", rows)


def _mmstar(root: Path, truth: Truth) -> Path:
    rows = []
    for i in range(4):
        stem = f"[mmstar {i}] Which animal is in the picture?"
        gold = "ABCD"[i]
        question = f"{stem}\nOptions: A: cat, B: dog, C: bird, D: fish"
        rows.append(
            {
                "index": i,
                "question": question,
                "image": _image_struct((56, 56), 40 + i),
                "answer": gold,
                "category": "coarse perception",
            }
        )
        truth[stem] = (gold, _wrong_letter(gold))
    return _parquet(root / "mmstar" / "val-00000-of-00001.parquet", rows)


def _mathvista(root: Path, truth: Truth) -> Path:
    """JSONL with `image` paths under images/; multiple choice answered by the option's text."""
    folder = root / "mathvista"
    rows = []
    for i in range(4):
        question = f"[mathvista {i}] What is the value of the largest bar?"
        image = f"images/{i + 1}.png"
        _save(folder / image, _png((56, 56), 60 + i))
        if i % 2:
            choices = ["3", "5", "7", "9"]
            rows.append(
                {
                    "pid": str(i + 1),
                    "question": question,
                    "image": image,
                    "choices": choices,
                    "answer": choices[i],
                    "question_type": "multi_choice",
                    "answer_type": "text",
                    "unit": None,
                }
            )
            truth[question] = ("ABCD"[i], _wrong_letter("ABCD"[i]))
        else:
            rows.append(
                {
                    "pid": str(i + 1),
                    "question": question,
                    "image": image,
                    "choices": None,
                    "answer": str(10 + i),
                    "question_type": "free_form",
                    "answer_type": "integer",
                    "unit": None,
                }
            )
            truth[question] = (str(10 + i), "-3")
    return _jsonl(folder / "testmini.jsonl", rows)


def _mathvision(root: Path, truth: Truth) -> Path:
    folder = root / "mathvision"
    rows = []
    for i in range(4):
        question = f"<image1> [mathvision {i}] How many triangles are there?"
        image = f"images/{i + 1}.png"
        _save(folder / image, _png((56, 56), 70 + i))
        options = ["1", "2", "3", "4", "5"] if i < 2 else []
        answer = "ABCDE"[i] if options else str(i + 6)
        rows.append(
            {
                "id": str(i + 1),
                "question": question,
                "options": options,
                "image": image,
                "answer": answer,
                "level": 2,
                "subject": "counting",
            }
        )
        truth[question] = (answer, _wrong_letter(answer, "ABCDE") if options else "0")
    return _jsonl(folder / "test.jsonl", rows)


def _medxpertqa(root: Path, truth: Truth, subset: str) -> Path:
    folder = root / f"medxpertqa_{subset.lower()}"
    rows = []
    for i in range(4):
        stem = f"[medxpertqa {subset} {i}] A patient presents with fever. What is the diagnosis?"
        options = dict(zip("ABCDE", ["flu", "sepsis", "malaria", "dengue", "typhoid"], strict=True))
        listed = " ".join(f"({k}) {v}" for k, v in options.items())
        images = []
        if subset == "MM":
            images = [_save(folder / "images" / f"MM-{i}-a.png", _png((56, 56), 80 + i))]
        gold = "ABCDE"[i]
        rows.append(
            {
                "id": f"{subset}-{i}",
                "question": f"{stem} Answer Choices: {listed}",
                "options": options,
                "label": gold,
                "images": images,
                "medical_task": "Diagnosis",
                "body_system": "Other",
                "question_type": "Reasoning",
            }
        )
        truth[stem] = (gold, _wrong_letter(gold, "ABCDE"))
    if subset == "MM":
        rows.append(
            {
                "id": "MM-missing",
                "question": "[medxpertqa missing] ?",
                "options": {"A": "x", "B": "y"},
                "label": "A",
                "images": ["MM-404.png"],
            }
        )
    return _jsonl(folder / "test.jsonl", rows)


def _omnimedvqa(root: Path, truth: Truth) -> Path:
    """The release's layout: QA_information/Open-access/<dataset>.json (a JSON list) and Images/."""
    folder = root / "OmniMedVQA"
    rows = []
    for i in range(4):
        question = f"[omnimedvqa {i}] What modality is this image?"
        image = f"Images/Fake/{i}.png"
        _save(folder / image, _png((56, 56), 90 + i))
        options = ["CT", "MRI", "X-Ray", "Ultrasound"]
        rows.append(
            {
                "dataset": "Fake",
                "question_id": f"Fake_{i}",
                "question_type": "Modality Recognition",
                "question": question,
                "gt_answer": options[i],
                "image_path": image,
                "option_A": options[0],
                "option_B": options[1],
                "option_C": options[2],
                "option_D": options[3],
                "modality_type": "CT",
            }
        )
        truth[question] = (options[i], options[(i + 1) % 4])
    path = folder / "QA_information" / "Open-access" / "Fake.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _nejm(root: Path, truth: Truth) -> Path:
    """The community release's JSON list (`image_id`, `option_A…E`, `correct_answer`), images saved as
    images/<image_id>.jpg."""
    folder = root / "nejm"
    rows = []
    for i in range(4):
        question = f"[nejm {i}] A rash appeared after a hike. What is the diagnosis?"
        _save(folder / "images" / f"{i + 1}.jpg", _png((84, 56), 100 + i))
        gold = "ABCDE"[i]
        rows.append(
            {
                "image_id": i + 1,
                "date": f"apr-0{i + 1}-2010",
                "question": question,
                "option_A": "Lyme disease",
                "option_B": "Cellulitis",
                "option_C": "Tinea",
                "option_D": "Eczema",
                "option_E": "Psoriasis",
                "correct_answer": gold,
            }
        )
        truth[question] = (gold, _wrong_letter(gold, "ABCDE"))
    path = folder / "image_challenge_dataset.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _vqa_rad(root: Path, truth: Truth) -> Path:
    rows = []
    answers = ["yes", "no", "left lung", "CT"]
    for i, answer in enumerate(answers):
        question = f"[vqa_rad {i}] Is there an abnormality, and where?"
        rows.append({"image": _image_struct((56, 56), 110 + i), "question": question, "answer": answer})
        truth[question] = (f" {answer.title()}. ", "right kidney")  # graded after normalisation
    return _parquet(root / "vqa_rad" / "test-00000-of-00001.parquet", rows)


def _slake(root: Path, truth: Truth) -> Path:
    """JSON list as released, images in imgs/; one Chinese record (filtered) and one broken image."""
    folder = root / "slake"
    rows = []
    for i, (answer, kind) in enumerate(
        [("Yes", "CLOSED"), ("Brain", "OPEN"), ("No", "CLOSED"), ("MRI", "OPEN")]
    ):
        question = f"[slake {i}] What does the scan show?"
        image = f"xmlab{i}/source.png"
        _save(folder / "imgs" / image, _png((56, 56), 120 + i))
        rows.append(
            {
                "img_id": i,
                "img_name": image,
                "question": question,
                "answer": answer,
                "q_lang": "en",
                "qid": i,
                "answer_type": kind,
                "content_type": "Organ",
            }
        )
        truth[question] = (answer.lower(), "liver")
    rows.append(
        {
            "img_id": 9,
            "img_name": "xmlab0/source.png",
            "question": "[slake zh] 这是什么?",
            "answer": "脑",
            "q_lang": "zh",
            "qid": 9,
            "answer_type": "OPEN",
        }
    )
    _save(folder / "imgs" / "xmlab7" / "source.png", b"not a png at all")
    rows.append(
        {
            "img_id": 7,
            "img_name": "xmlab7/source.png",
            "question": "[slake broken] ?",
            "answer": "Yes",
            "q_lang": "en",
            "qid": 7,
            "answer_type": "CLOSED",
        }
    )
    path = folder / "test.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def _pmc_vqa(root: Path, truth: Truth) -> Path:
    import csv

    folder = root / "pmc_vqa"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test_2.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "Figure_path",
                "Question",
                "Answer",
                "Choice A",
                "Choice B",
                "Choice C",
                "Choice D",
                "Answer_label",
            ]
        )
        for i in range(4):
            image = _save(folder / "images" / f"PMC{i}_fig1.png", _png((56, 56), 130 + i))
            question = f"[pmc_vqa {i}] Which structure is marked by the arrow?"
            choices = ["Aorta", "Liver", "Spleen", "Kidney"]
            writer.writerow(
                [
                    image,
                    question,
                    choices[i],
                    *(f"{k}:{c}" for k, c in zip("ABCD", choices, strict=True)),
                    "ABCD"[i],
                ]
            )
            truth[question] = ("ABCD"[i], _wrong_letter("ABCD"[i]))
    return path


def image_key(image: Image.Image) -> str:
    """The truth key of a question asked by its picture alone (the toy world's all read alike)."""
    import hashlib

    return "image:" + hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:16]


def _arith(root: Path, truth: Truth, modality: str) -> Path:
    """The demo's held-out files, as `xr_nemo.demo.toy_world` writes them. Transcription gets a world
    of its own, so that a picture has one truth."""
    from xr_nemo.demo.toy_world import Problem, write_toy_world

    seed = 4 if modality == "read" else 3
    world = write_toy_world(root / f"toy_world_{seed}", train=4, prompts=2, held_out=4, seed=seed)
    for line in world.eval_text.read_text().splitlines():
        problem = Problem(json.loads(line)["question"].split("\n")[0])
        if modality == "read":
            wrong = f"{(int(problem.expression[0]) + 1) % 10}{problem.expression[1:]}"
            truth[image_key(problem.image())] = (problem.expression, wrong)
        else:
            right, wrong = problem.answer, str(int(problem.answer) + 1)
            truth[problem.question] = truth[image_key(problem.image())] = (right, wrong)
    return {"text": world.eval_text, "image": world.eval_image, "read": world.eval_read}[modality]


WRITERS: dict[str, Callable[[Path, Truth], Path]] = {
    "gsm8k": _gsm8k,
    "medqa": _medqa,
    "medqa_5op": _medqa_5op,
    "mmlu_pro": _mmlu_pro,
    "mmlu_pro_health": _mmlu_pro,
    "medmcqa": _medmcqa,
    "medmcqa_release": _medmcqa_release,
    "pubmedqa": _pubmedqa,
    "mmmu": _mmmu,
    "mmmu_health": _mmmu,
    "mmmu_pro": _mmmu_pro,
    "mmmu_pro_health": _mmmu_pro,
    "mmstar": _mmstar,
    "mathvista": _mathvista,
    "mathvision": _mathvision,
    "medxpertqa_text": lambda root, truth: _medxpertqa(root, truth, "Text"),
    "medxpertqa_mm": lambda root, truth: _medxpertqa(root, truth, "MM"),
    "omnimedvqa": _omnimedvqa,
    "nejm": _nejm,
    "vqa_rad": _vqa_rad,
    "slake": _slake,
    "pmc_vqa": _pmc_vqa,
    "arith_text": lambda root, truth: _arith(root, truth, "text"),
    "arith_image": lambda root, truth: _arith(root, truth, "image"),
    "arith_read": lambda root, truth: _arith(root, truth, "read"),
}
VALID = {
    "gsm8k": 6,
    "medqa": 6,
    "medqa_5op": 6,
    "mmlu_pro": 8,
    "mmlu_pro_health": 4,
    "medmcqa": 6,
    "medmcqa_release": 6,
    "pubmedqa": 6,
    "mmmu": 6,
    "mmmu_health": 4,
    "mmmu_pro": 4,
    "mmmu_pro_health": 2,
    "mmstar": 4,
    "mathvista": 4,
    "mathvision": 4,
    "medxpertqa_text": 4,
    "medxpertqa_mm": 4,
    "omnimedvqa": 4,
    "nejm": 4,
    "vqa_rad": 2,
    "slake": 2,
    "pmc_vqa": 4,
    "arith_text": 4,
    "arith_image": 4,
    "arith_read": 4,
}
SKIPPED = {
    "gsm8k": {"malformed record": 1},
    "medqa": {"malformed record": 1},
    "medmcqa": {"malformed record": 1},
    "medmcqa_release": {"malformed record": 1},
    "medxpertqa_mm": {"missing image": 1},
    "slake": {"undecodable image": 1},
}


def write_fixtures(root: Path, names: list[str] | None = None) -> tuple[dict[str, Path], Truth]:
    """Write the fixtures of `names` (default: all) under `root`; returns their paths and the truth."""
    truth: Truth = {}
    paths: dict[str, Path] = {}
    written: dict[Callable, Path] = {}
    for name in names or list(WRITERS):
        writer = WRITERS[name]
        if writer not in written:
            written[writer] = writer(root, truth)
        paths[name] = written[writer]
    return paths, truth
