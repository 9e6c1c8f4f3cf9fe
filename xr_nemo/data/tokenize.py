"""Conversations → token ids with a loss mask on the assistant tokens, through the model's chat template;
tokenised in worker processes into a cache that a later run (or an interrupted one) reuses chunk by chunk.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from xr_nemo.config.schema import DataConfig
from xr_nemo.data.conversation import Message, prepare
from xr_nemo.data.records import DataError, read_records

CHUNK_RECORDS = 512
FORMAT_VERSION = 2  # part of the cache's name: raise it when the same records tokenise otherwise (2: answers)


def tokenize_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message]
) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and, per token, whether it is an assistant token (trained on).

    The text is cut at the assistant turns as the chat template renders them (prompt with the generation
    prompt, then the turn through its end-of-turn token) and each piece is tokenised on its own, so the
    mask is exact whatever the template."""
    render = tokenizer.apply_chat_template
    full = render(messages, tokenize=False)
    ids: list[int] = []
    mask: list[bool] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_end = len(render(messages[:index], tokenize=False, add_generation_prompt=True))
        through_turn = render(messages[: index + 1], tokenize=False)
        turn_end = len(through_turn)
        if not (cursor <= prompt_end <= turn_end and full[:turn_end] == through_turn):
            raise DataError("the chat template does not render conversations prefix by prefix")
        for start, end, trained in ((cursor, prompt_end, False), (prompt_end, turn_end, True)):
            piece = tokenizer(full[start:end], add_special_tokens=False)["input_ids"]
            ids += piece
            mask += [trained] * len(piece)
        cursor = turn_end
    return ids, mask


@dataclass
class TokenizeStats:
    records: int = 0
    skipped_bad: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.records - self.skipped_bad - self.dropped_overlong} samples from {self.records} records "
            f"({self.skipped_bad} bad skipped, {self.truncated} truncated, {self.dropped_overlong} over-long "
            "dropped)"
        )


_worker_tokenizer: PreTrainedTokenizerBase | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)


def _tokenize_chunk(job: tuple[Path, list[list[Message]], int, str]) -> None:
    """Write one chunk file; its truncated/dropped counts go in the file (an interrupted run's chunks
    are counted the same way as this run's)."""
    out, conversations, max_length, overlong = job
    stats = TokenizeStats()
    all_ids, all_masks, offsets = [], [], [0]
    for messages in conversations:
        ids, mask = tokenize_messages(_worker_tokenizer, messages)
        if len(ids) > max_length:
            if overlong == "drop" or not any(mask[:max_length]):
                stats.dropped_overlong += 1
                continue
            ids, mask = ids[:max_length], mask[:max_length]
            stats.truncated += 1
        all_ids += ids
        all_masks += mask
        offsets.append(len(all_ids))
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        ids=np.asarray(all_ids, dtype=np.int32),
        mask=np.asarray(all_masks, dtype=bool),
        offsets=np.asarray(offsets, dtype=np.int64),
        stats=np.asarray([stats.truncated, stats.dropped_overlong], dtype=np.int64),
    )
    os.replace(tmp, out)


def _fingerprint(source: str, split: str, tokenizer_dir: Path, data: DataConfig) -> str:
    digest = hashlib.sha256()
    path = Path(source)
    files = (
        sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
        if path.exists()
        else []
    )
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(f"{source}|{split}|{FORMAT_VERSION}".encode())
    for name in sorted(os.listdir(tokenizer_dir)):
        if "token" in name or "template" in name:
            digest.update((tokenizer_dir / name).read_bytes())
    relevant = {
        k: v
        for k, v in asdict(data).items()
        if k in ("schema", "max_length", "overlong", "on_error", "template", "system_prompt", "max_samples")
    }
    digest.update(json.dumps(relevant, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The tokenizer's special tokens (ChatML's and the vision placeholders), which data text must not
    spell out."""
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    return tuple(sorted(set(tokenizer.all_special_tokens) | set(added)))


def _conversation_chunks(
    source: str, split: str, data: DataConfig, stats: TokenizeStats, reserved: tuple[str, ...]
) -> Iterator[list[list[Message]]]:
    chunk: list[list[Message]] = []
    for item in read_records(source, split):
        if data.max_samples is not None and stats.records >= data.max_samples:
            break
        stats.records += 1
        try:
            if isinstance(item, DataError):
                raise item
            chunk.append(prepare(item, data.schema, data.template, data.system_prompt, reserved))
        except DataError as error:
            if data.on_error != "skip":
                raise DataError(
                    error.what, where=error.where, fix="fix or remove the record, or set data.on_error=skip"
                ) from None
            stats.skipped_bad += 1
            if len(stats.bad_examples) < 5:
                stats.bad_examples.append(f"{error.where}: {error.what}")
        if len(chunk) == CHUNK_RECORDS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class TokenizedDataset:
    """Token ids and loss masks of every kept sample, memory-resident as flat arrays."""

    def __init__(self, directory: Path, stats: TokenizeStats) -> None:
        chunks = [np.load(p, allow_pickle=False) for p in sorted(directory.glob("chunk_*.npz"))]
        self.ids = np.concatenate([c["ids"] for c in chunks]) if chunks else np.zeros(0, np.int32)
        self.mask = np.concatenate([c["mask"] for c in chunks]) if chunks else np.zeros(0, bool)
        starts, shift = [], 0
        for chunk in chunks:
            starts.append(chunk["offsets"][:-1] + shift)
            shift += int(chunk["offsets"][-1])
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.ends = np.append(self.starts[1:], shift) if len(self.starts) else self.starts
        self.stats = stats

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.starts[index], self.ends[index]
        return self.ids[start:end], self.mask[start:end]


def tokenize_dataset(
    source: str,
    split: str,
    tokenizer_dir: str | Path,
    data: DataConfig,
    cache_root: str | Path,
    progress: bool = True,
) -> TokenizedDataset:
    """Tokenise `source` (or reuse the cache). Bad records stop here with their file:line (or are skipped
    and counted with `data.on_error=skip`)."""
    tokenizer_dir = Path(tokenizer_dir)
    directory = Path(cache_root) / f"tokenized-{_fingerprint(source, split, tokenizer_dir, data)}"
    done = directory / "done.json"
    if done.exists():
        return TokenizedDataset(directory, TokenizeStats(**json.loads(done.read_text())))
    directory.mkdir(parents=True, exist_ok=True)
    stats = TokenizeStats()
    reserved = control_tokens(AutoTokenizer.from_pretrained(tokenizer_dir))
    jobs = (
        (directory / f"chunk_{index:06d}.npz", chunk, data.max_length, data.overlong)
        for index, chunk in enumerate(_conversation_chunks(source, split, data, stats, reserved))
    )
    pending = (job for job in jobs if not job[0].exists())
    bar = tqdm(desc=f"tokenize {Path(source).name}", unit="chunk", disable=not progress)
    if data.num_workers <= 1:  # no pool to start: small data and tests
        _init_worker(str(tokenizer_dir))
        for job in pending:
            _tokenize_chunk(job)
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(data.num_workers, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as pool:
            for _ in pool.imap(_tokenize_chunk, pending):
                bar.update()
    bar.close()
    for chunk in sorted(directory.glob("chunk_*.npz")):
        truncated, dropped = np.load(chunk, allow_pickle=False)["stats"]
        stats.truncated += int(truncated)
        stats.dropped_overlong += int(dropped)
    done.write_text(json.dumps(asdict(stats)))
    dataset = TokenizedDataset(directory, stats)
    if len(dataset) == 0:
        raise DataError(f"no usable samples in {source}: {stats.summary()}", where=source)
    return dataset
