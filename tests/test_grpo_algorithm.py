"""GRPO arithmetic against values computed by hand (the entropy against torch's Categorical), the
chunked vocabulary-parallel log-probabilities against a plain log_softmax (at TP=1 and TP=2) and the
memory they keep, forced exiting on a scripted engine, the layout of training micro-batches, and the
prompt readers."""

import json
import math

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from xr_nemo.generation.engine import Completion, Sampling, generate
from xr_nemo.grpo.algorithm import (
    clipped_surrogate,
    group_advantages,
    informative_groups,
    kl_k3,
    loss_weights,
    truncated_importance_weights,
)
from xr_nemo.grpo.batch import Sample, microbatch, minibatches


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # group 1: mean 0.5, sample std sqrt(1/3); group 2: mean 0.75, std 0.5
    centred = group_advantages(rewards, 4, normalize_std=False)
    assert centred.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])
    scaled = group_advantages(rewards, 4, normalize_std=True, eps=0.0)
    s1 = math.sqrt(1 / 3)
    assert scaled.tolist() == pytest.approx([0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1, 0.5, 0.5, 0.5, -1.5])


def test_equal_rewards_give_zero_advantage_and_no_signal():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    half = 1 / math.sqrt(2)  # (0 - 0.5) / std([0, 1]) with the sample std √½
    assert group_advantages(rewards, 2, normalize_std=True).tolist() == pytest.approx(
        [0, 0, 0, 0, -half, half], rel=1e-5
    )
    assert informative_groups(rewards, 2).tolist() == [False, False, True]


def test_clipped_surrogate_by_hand():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.75, 0.75, 0.25, 0.25]))  # ratios 1.5, 1.5, 0.5, 0.5
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = clipped_surrogate(new, old, advantages, clip_low=0.2, clip_high=0.28)
    # A>0, ρ=1.5: min(1.5, 1.28) = 1.28 → clipped; A<0, ρ=1.5: min(-1.5, -1.28) = -1.5 → not clipped
    # A>0, ρ=0.5: min(0.5, 0.8) = 0.5 → not clipped; A<0, ρ=0.5: min(-0.5, -0.8) = -0.8 → clipped
    assert loss.tolist() == pytest.approx([-1.28, 1.5, -0.5, 0.8])
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_clip_higher_lets_rare_tokens_grow_further():
    old, new, advantage = torch.log(torch.tensor([0.1])), torch.log(torch.tensor([0.2])), torch.ones(1)
    symmetric, _ = clipped_surrogate(new, old, advantage, 0.2, 0.2)
    higher, _ = clipped_surrogate(new, old, advantage, 0.2, 0.28)
    assert symmetric.item() == pytest.approx(-1.2)
    assert higher.item() == pytest.approx(-1.28)


def test_kl_k3_by_hand():
    logprobs = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.2]))
    # r = log(0.25/0.5) = -log 2: e^r - r - 1 = 0.5 + log 2 - 1
    assert kl_k3(logprobs, ref).tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0])
    # far from the reference: r = 30 → clamped to 20 before exp, the estimate to 10; r = -30 → 20 - 1 → 10
    far = kl_k3(torch.tensor([-30.0, 0.0]), torch.tensor([0.0, -30.0]))
    assert far.tolist() == [10.0, 10.0]


def test_truncated_importance_weights():
    train = torch.log(torch.tensor([0.4, 0.9, 0.1]))
    rollout = torch.log(torch.tensor([0.2, 0.3, 0.2]))
    assert truncated_importance_weights(train, rollout, cap=2.0).tolist() == pytest.approx([2.0, 2.0, 0.5])


def test_token_and_sequence_aggregation_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    weights, counts = loss_weights(mask, "token")
    assert ((per_token * weights).sum().item(), counts.sum().item()) == (10.0, 4.0)  # 10 / 4
    weights, counts = loss_weights(mask, "sequence")
    # the mean of the sequence means (2 and 4); the sequence without response tokens does not count
    assert ((per_token * weights).sum().item(), counts.sum().item()) == (6.0, 2.0)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_aggregation_weights_add_up_over_any_split_of_the_positions(level):
    """Context-parallel ranks each hold some positions of every sequence: their partial sums must add
    up to the whole batch's."""
    generator = torch.Generator().manual_seed(0)
    per_token = torch.randn(4, 12, generator=generator)
    mask = (torch.rand(4, 12, generator=generator) > 0.4).float()
    weights, counts = loss_weights(mask, level)
    whole = ((per_token * weights).sum(), counts.sum())
    part = torch.tensor([0, 1, 2, 9, 10, 11])  # context-parallel rank 0 of 2: chunks 0 and 3
    rest = torch.tensor([3, 4, 5, 6, 7, 8])
    halves = [((per_token * weights)[:, p].sum(), counts[:, p].sum()) for p in (part, rest)]
    assert torch.allclose(halves[0][0] + halves[1][0], whole[0])
    assert halves[0][1] + halves[1][1] == whole[1]
    assert all(float(count) == int(count) for _, count in halves)  # whole counts on every rank


class ScriptedEngine:
    """Continues the script named by the prompt's first token, to test what wraps engines."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.calls = []

    def sample(self, prompts, seeds, sampling):
        self.calls.append((list(prompts), list(seeds), sampling.max_new_tokens))
        out = []
        for prompt in prompts:
            script = self.scripts[prompt[0]]
            done = len(prompt) - 1  # the prompt is [script] + the tokens so far
            tokens = []
            for token in script[done:]:
                tokens.append(token)
                if token in sampling.stop_token_ids or len(tokens) == sampling.max_new_tokens:
                    break
            out.append(
                Completion(
                    tokens,
                    [-0.5] * len(tokens),
                    finished=bool(tokens) and tokens[-1] in sampling.stop_token_ids,
                )
            )
        return out


def test_forced_exit_appends_the_closing_once_and_lets_the_model_answer(any_tokenizer):
    """With either vocabulary: an endless thinking gets `\\n</think>\\n\\n` appended once (not sampled)
    and goes on to answer; a thinking that closed by itself — with Qwen2.5's tokens `</`, `think`,
    `>\\n\\n`, no `</think>` token — gets nothing appended; a finished one is left alone."""
    from xr_nemo.generation.engine import FORCED_EXIT_TEXT, ForcedExit

    tokenizer = any_tokenizer
    ids = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    endless = ids(" and again" * 20)
    closed = [*ids("so it is 12.</think>\n\n<answer>12</answer>"), stop]
    scripts = [endless, [*ids("<answer>1</answer>"), stop], closed]
    closes_at = next(k for k in range(len(closed)) if "</think>" in tokenizer.decode(closed[:k]))
    budget = closes_at + 1  # the natural one closes within the budget, then answers past it
    assert budget < len(closed) - 1
    exit_ = ForcedExit.of(tokenizer, budget)
    assert tokenizer.decode(list(exit_.suffix_ids)) == FORCED_EXIT_TEXT == "\n</think>\n\n"
    sampling = Sampling(max_new_tokens=40, stop_token_ids=(stop,), forced_exit=exit_)
    engine = ScriptedEngine(scripts)
    forced, short, natural = (group[0] for group in generate(engine, [[0], [1], [2]], 1, 0, sampling))

    suffix = list(exit_.suffix_ids)
    assert forced.forced_exit and forced.token_ids[: budget + len(suffix)] == endless[:budget] + suffix
    assert forced.sampled[: budget + len(suffix)] == [True] * budget + [False] * len(suffix)
    assert tokenizer.decode(forced.token_ids).count("</think>") == 1
    assert short.token_ids == scripts[1] and not short.forced_exit
    assert not natural.forced_exit and natural.token_ids == closed
    assert tokenizer.decode(natural.token_ids).count("</think>") == 1


def test_generate_seeds_each_completion_by_its_position():
    engine = ScriptedEngine([[1, 0]])
    generate(engine, [[0], [0]], 3, 100, Sampling(max_new_tokens=2, stop_token_ids=(0,)))
    assert engine.calls[0][1] == [100, 101, 102, 103, 104, 105]


def test_microbatch_places_advantages_and_logprobs_at_label_positions():
    completion = Completion([7, 8, 9], [-0.1, -0.2, -0.3], sampled=[True, False, True], finished=True)
    batch = microbatch(
        [Sample([1, 2], completion, 0.5), Sample([1, 2, 3, 4], Completion([5], [-1.0]), -1.0)], 0
    )
    # row 0: tokens 1 2 7 8 (9 is only a label); position t predicts token t + 1
    assert batch["tokens"][0].tolist() == [1, 2, 7, 8]
    assert batch["labels"][0].tolist() == [2, 7, 8, 9]
    assert batch["loss_mask"][0].tolist() == [0.0, 1.0, 0.0, 1.0]  # the forced token carries no loss
    assert batch["advantages"][0].tolist() == [0.0, 0.5, 0.5, 0.5]
    assert batch["rollout_logprobs"][0].tolist() == pytest.approx([0.0, -0.1, -0.2, -0.3])
    assert batch["labels"][1].tolist() == [2, 3, 4, 5]
    assert batch["loss_mask"][1].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert batch["advantages"][1].tolist() == [0.0, 0.0, 0.0, -1.0]


def test_a_micro_batch_of_several_rows_reaches_the_model_as_plain_causal_rows():
    """Transformer Engine takes packed boundaries one row per micro-batch; GRPO's rows hold one
    right-padded sample each, so they go without boundaries, all rows in one micro-batch."""
    from xr_nemo.config.schema import GRPOAlgorithmConfig
    from xr_nemo.grpo.step import policy_step

    seen: dict = {}

    def model(tokens, position_ids, attention_mask, **kwargs):
        seen.update(rows=tokens.shape[0], attention_mask=attention_mask, **kwargs)
        return torch.zeros(*tokens.shape, 8)

    samples = [
        Sample([1, 2], Completion([3, 4], [-0.5, -0.5]), 1.0),
        Sample([1], Completion([3], [-1.0]), -1.0),
    ]
    policy_step(GRPOAlgorithmConfig(), 1.0, iter([microbatch(samples, 0)]), model)
    assert seen == {"rows": 2, "attention_mask": None}


def test_minibatches_split_evenly_and_fill_empty_ones():
    samples = [Sample([1, 2], Completion([3], [-1.0]), 1.0) for _ in range(5)]
    updates = minibatches(samples, updates=2, micro_batch_size=2, pad_id=0)
    assert [[b["tokens"].shape[0] for b in update] for update in updates] == [[2, 1], [2]]
    lonely = minibatches(samples[:1], updates=2, micro_batch_size=2, pad_id=0)
    assert lonely[1][0]["loss_mask"].sum() == 0  # a placeholder: takes part, carries no loss


def test_prompt_readers(tmp_path):
    from xr_nemo.data.records import DataError
    from xr_nemo.grpo.prompts import load_prompts
    from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer

    tokenizer = build_tokenizer(256)
    orz = tmp_path / "orz.json"
    orz.write_text(
        json.dumps(
            [
                [
                    {"from": "human", "value": "What is 1+1?"},
                    {"from": "assistant", "ground_truth": {"value": "2"}},
                ],
                [
                    {"from": "human", "value": "Area?"},
                    {"from": "assistant", "ground_truth": {"value": "\\pi"}},
                ],
            ]
        )
    )
    prompts = load_prompts(str(orz), "train", tokenizer)
    assert [(i.question, i.answer) for i in prompts.items] == [("What is 1+1?", "2"), ("Area?", "\\pi")]
    text = tokenizer.decode(prompts.token_ids[0])
    assert "What is 1+1?" in text and "<answer>" in text and text.rstrip().endswith("assistant")
    bare = tokenizer.decode(load_prompts(str(orz), "train", tokenizer, template="none").token_ids[0])
    assert "user\nWhat is 1+1?<|im_end|>" in bare and "<answer>" not in bare

    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text(
        json.dumps({"question": "Which?", "options": ["red", "blue"], "answer": "blue"})
        + "\n"
        + json.dumps({"question": "Which?", "options": {"A": "x", "B": "y"}, "answer": "A"})
        + "\n"
    )
    items = load_prompts(str(mcq), "train", tokenizer).items
    assert [(i.answer, i.options) for i in items] == [
        ("B", {"A": "red", "B": "blue"}),
        ("A", {"A": "x", "B": "y"}),
    ]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "ok", "answer": "1"}) + "\n" + json.dumps({"prompt": "", "answer": "2"}) + "\n"
    )
    with pytest.raises(DataError) as error:
        load_prompts(str(bad), "train", tokenizer)
    assert f"{bad}:2" in str(error.value)
    skipped = load_prompts(str(bad), "train", tokenizer, on_error="skip")
    assert len(skipped) == 1 and skipped.skipped[0].startswith(f"{bad}:2")


def test_benchmark_readers_give_training_prompts_the_questions_evaluation_asks(tmp_path):
    """GRPO reads a benchmark's records with evaluation's reader (same question, options and gold) and
    asks them in the paper's training template, as the only turn."""
    from xr_nemo.data.prompt_format import training_prompt
    from xr_nemo.errors import ConfigError
    from xr_nemo.grpo.prompts import load_prompts
    from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer
    from xr_nemo.recipes.tiny_cpu_med import MEDQA
    from xr_nemo.tasks.benchmarks import get_benchmark

    tokenizer = build_tokenizer(256)
    prompts = load_prompts(str(MEDQA), "train", tokenizer, schema="medqa")
    records = [json.loads(line) for line in MEDQA.read_text().splitlines()]
    assert [(i.answer, i.options) for i in prompts.items] == [
        (r["answer_idx"], r["options"]) for r in records
    ]
    evaluated = list(get_benchmark("medqa").items(str(MEDQA)))
    assert [(i.question, i.options, i.answer) for i in prompts.items] == [
        (e.question, e.options, e.gold) for e in evaluated
    ]
    expected = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": training_prompt(e.question, e.options)}],
            tokenize=True,
            add_generation_prompt=True,
        )
        for e in evaluated
    ]
    assert prompts.token_ids == [list(ids["input_ids"] if hasattr(ids, "keys") else ids) for ids in expected]

    medmcqa = tmp_path / "medmcqa.jsonl"
    medmcqa.write_text(
        json.dumps({"question": "Nerve?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2}) + "\n"
    )
    (item,) = load_prompts(str(medmcqa), "train", tokenizer, schema="medmcqa").items
    assert (item.answer, item.options) == ("C", {"A": "a", "B": "b", "C": "c", "D": "d"})
    with pytest.raises(ConfigError, match="unknown prompt schema 'mmmu'") as error:
        load_prompts(str(medmcqa), "train", tokenizer, schema="mmmu")  # has images
    assert "medqa" in error.value.fix


def test_overlong_responses_are_masked_or_penalised():
    from xr_nemo.config.schema import GRPOConfig
    from xr_nemo.grpo.prompts import PromptItem, PromptSet
    from xr_nemo.grpo.rollouts import Group, StepRollouts
    from xr_nemo.grpo.run import _samples
    from xr_nemo.rewards.pool import Score

    prompts = PromptSet([PromptItem("p", "q", "1")], [[1, 2]])
    completions = [Completion([3], [-1.0], finished=True), Completion([4], [-1.0], finished=False)]
    scores = [Score(1.0, 0.0, 1.0), Score(1.0, 0.0, 1.0)]
    rollouts = StepRollouts([Group(0, completions, scores)], [], [0], 0, 1, 1)
    config = GRPOConfig()
    config.grpo.normalize_std = False

    kept = _samples(config, rollouts, prompts)
    assert [s.advantage for s in kept] == [0.0, 0.0] and all(s.carries_loss for s in kept)
    config.grpo.overlong = "mask"
    assert [s.carries_loss for s in _samples(config, rollouts, prompts)] == [True, False]
    config.grpo.overlong, config.grpo.overlong_penalty = "keep", 0.5
    assert [s.advantage for s in _samples(config, rollouts, prompts)] == [0.25, -0.25]


def test_updates_take_the_same_samples_whatever_the_data_parallel_size():
    """Two updates over 3 groups of 8 samples: the first takes global samples 0–11 (group 0 and half of
    group 1), split over two ranks as rank 0 holds groups 0–1 and rank 1 group 2, exactly as one rank
    would have split them."""
    from xr_nemo.generation.engine import Completion

    def samples(count):
        return [
            Sample([1, 2], Completion([3, 4], [-0.1, -0.1], finished=True), 1.0, True) for _ in range(count)
        ]

    def sizes(batches):
        return [sum(int(b["num_samples"]) for b in update) for update in batches]

    single = minibatches(samples(24), 2, 4, 0)
    rank0 = minibatches(samples(16), 2, 4, 0, positions=(list(range(16)), 24))
    rank1 = minibatches(samples(8), 2, 4, 0, positions=(list(range(16, 24)), 24))
    assert sizes(single) == [12, 12]
    assert sizes(rank0) == [12, 4] and sizes(rank1) == [1, 8]  # rank 1's first update: a placeholder


def _label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) from the whole vocabulary, without megatron-core."""
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _loss_batch(old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> dict:
    weights, counts = loss_weights(mask, "token")
    return {
        "old_logprobs": old_logprobs,
        "rollout_logprobs": old_logprobs,
        "advantages": advantages,
        "loss_weights": weights,
        "loss_counts": counts,
    }


ENTROPY_LOGITS = torch.tensor(
    [
        [[0.3, -1.2, 2.0, 0.0, 0.7, -0.4], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]],  # any row; uniform: log 6
        [[40.0, 0.0, -3.0, 1.0, 0.5, 2.5], [-1.0, 3.0, 3.0, -2.0, 0.1, -0.6]],  # almost one-hot; two peaks
    ],
    dtype=torch.float64,
)


def test_entropy_and_its_gradient_equal_torch_categorical():
    from xr_nemo.grpo.step import vocab_parallel_logprobs

    weights = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    labels = torch.zeros(2, 2, dtype=torch.long)
    logits = ENTROPY_LOGITS.clone().requires_grad_()
    (vocab_parallel_logprobs(logits, labels, entropy=True)[1] * weights).sum().backward()
    reference = ENTROPY_LOGITS.clone().requires_grad_()
    expected = torch.distributions.Categorical(logits=reference).entropy()
    (expected * weights).sum().backward()
    assert torch.allclose(
        vocab_parallel_logprobs(ENTROPY_LOGITS, labels, entropy=True)[1], expected, atol=1e-12
    )
    assert expected[0, 1].item() == pytest.approx(math.log(6))
    assert torch.allclose(logits.grad, reference.grad, atol=1e-12)


class ThreadGroup:
    """A stand-in for a process group whose ranks are threads: `all_reduce` sums (or takes the maximum
    of) the tensors every rank passes, in place, as torch.distributed does."""

    def __init__(self, size: int) -> None:
        import threading

        self.size, self.rank = size, threading.local()
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots: list = [None] * size

    def all_reduce(self, tensor, op=torch.distributed.ReduceOp.SUM, group=None):
        assert group is self
        self.slots[self.rank.value] = tensor.clone()
        self.barrier.wait()
        stacked = torch.stack(self.slots)
        result = stacked.amax(0) if op == torch.distributed.ReduceOp.MAX else stacked.sum(0)
        self.barrier.wait()  # every rank has read the slots before the next call writes them
        tensor.copy_(result)

    def run(self, fn, inputs: list) -> list:
        from concurrent.futures import ThreadPoolExecutor

        def as_rank(rank):
            self.rank.value = rank
            return fn(rank, inputs[rank])

        with ThreadPoolExecutor(self.size) as pool:
            return list(pool.map(as_rank, range(self.size)))


VOCAB = 50


def _logits_and_labels(dtype=torch.float32, vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, 5, vocab] logits, a few rows near one-hot with the peak in either half of the vocabulary,
    and labels in both halves."""
    generator = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(3, 5, vocab, generator=generator)
    logits[0, 0, 7], logits[1, 2, 41], logits[2, 4, 41] = 40.0, 35.0, 30.0
    labels = torch.randint(0, vocab, (3, 5), generator=generator)
    labels[0, 0], labels[1, 2] = 7, 3  # the peak itself; far below a peak on the other half
    return logits.to(dtype), labels


# how the entropy is taken: not at all (old and reference passes); only reported (the policy pass
# without the bonus); with its gradient (with the bonus)
MODES = {"logprobs": (False, False), "reported": (True, False), "bonus": (True, True)}


def _weighted_gradient(logits, outputs_of, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """∂/∂logits of Σ w·log p (+ Σ w'·H in mode `bonus`), and the outputs: log p, and H if computed."""
    entropy, through_entropy = MODES[mode]
    generator = torch.Generator().manual_seed(4)
    weights = torch.randn(2, *logits.shape[:-1], generator=generator)
    logits = logits.clone().requires_grad_()
    logprobs, token_entropy = outputs_of(logits, entropy)
    loss = (logprobs * weights[0]).sum()
    if through_entropy:
        loss = loss + (token_entropy * weights[1]).sum()
    loss.backward()
    outputs = [logprobs] if token_entropy is None else [logprobs, token_entropy]
    return logits.grad, torch.stack(outputs).detach()


def _plain(labels: torch.Tensor, temperature: float, dtype: torch.dtype = torch.float32):
    """Log-probabilities and entropy as computed before chunking: the whole vocabulary upcast at once
    (to float32 by default, as the training code did; float64 for gradients, as autograd through
    Categorical's −Σ p·log p in float32 is itself 1e-6 off)."""

    def outputs_of(logits, entropy: bool):
        scaled = logits.to(dtype) / temperature
        token_entropy = torch.distributions.Categorical(logits=scaled).entropy() if entropy else None
        return _label_logprobs(scaled, labels), token_entropy

    return outputs_of


def _expected(logits, labels, temperature: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`_weighted_gradient` of the plain computation: the gradient in float64, the outputs in float32."""
    _, outputs = _weighted_gradient(logits, _plain(labels, temperature), mode)
    grad, _ = _weighted_gradient(logits.double(), _plain(labels, temperature, torch.float64), mode)
    return grad.float(), outputs


def _chunked(labels, temperature: float, group=None, vocab_start: int = 0, rows: int = 2):
    """`vocab_parallel_logprobs` in chunks of `rows` rows."""
    from xr_nemo.grpo.step import vocab_parallel_logprobs

    def outputs_of(logits, entropy: bool):
        chunk = rows * logits.shape[-1]
        return vocab_parallel_logprobs(
            logits, labels, temperature, group, vocab_start, entropy=entropy, chunk_elements=chunk
        )

    return outputs_of


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_chunked_logprobs_and_entropy_equal_the_whole_vocabulary_log_softmax(temperature, mode):
    """Chunks of 2 rows (the last one short) give the values and gradients of log_softmax over the whole
    vocabulary, whether the entropy is left out, only reported, or differentiated."""
    logits, labels = _logits_and_labels()
    grad, outputs = _weighted_gradient(logits, _chunked(labels, temperature), mode)
    expected_grad, expected = _expected(logits, labels, temperature, mode)
    assert torch.allclose(outputs, expected, rtol=0, atol=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=0, atol=1e-6)
    assert outputs[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6) and outputs[0, 1, 2] < -10


def test_logprobs_of_bfloat16_logits_are_computed_in_float32():
    logits, labels = _logits_and_labels(torch.bfloat16)
    grad, outputs = _weighted_gradient(logits, _chunked(labels, 0.7), "bonus")
    expected_grad, expected = _expected(logits, labels, 0.7, "bonus")
    assert outputs.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert torch.allclose(outputs, expected, rtol=0, atol=1e-6)
    assert torch.allclose(grad.float(), expected_grad, rtol=2**-8, atol=1e-6)  # bf16 rounding


@pytest.mark.parametrize("mode", sorted(MODES))
def test_logprobs_from_two_vocabulary_shards_equal_the_whole_vocabulary(monkeypatch, mode):
    """At TP=2 each rank holds half of the vocabulary (ids from 0 and from VOCAB / 2): log-probabilities,
    entropy and the gradient of each shard equal TP=1's and the plain log_softmax's."""
    group = ThreadGroup(2)
    monkeypatch.setattr(torch.distributed, "all_reduce", group.all_reduce)
    logits, labels = _logits_and_labels()
    half = VOCAB // 2

    def on_rank(rank, shard):
        return _weighted_gradient(shard, _chunked(labels, 0.7, group, rank * half), mode)

    (first_grad, first), (second_grad, second) = group.run(on_rank, list(logits.split(half, dim=-1)))
    whole_grad, whole = _weighted_gradient(logits, _chunked(labels, 0.7), mode)
    expected_grad, expected = _expected(logits, labels, 0.7, mode)
    assert torch.equal(first, second)
    assert torch.allclose(first, whole, rtol=0, atol=1e-6)
    assert torch.allclose(first, expected, rtol=0, atol=1e-6)
    sharded_grad = torch.cat([first_grad, second_grad], dim=-1)
    assert torch.allclose(sharded_grad, whole_grad, rtol=0, atol=1e-6)
    assert torch.allclose(sharded_grad, expected_grad, rtol=0, atol=1e-6)


class Allocations(TorchDispatchMode):
    """The bytes of every new storage an operation makes (not views of, or writes into, its inputs'),
    forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
def test_the_training_pass_keeps_no_vocabulary_wide_copy_of_the_logits(monkeypatch, entropy_coef):
    """The policy loss at temperature 0.7 in chunks of 2 rows: autograd saves the model's logits and
    per-position values only (a few floats, against 4,000 bytes for a row of logits), and besides the
    logits' gradient, no operation forward or backward makes a tensor larger than a chunk's float32
    logits. Before chunking, the scaled float32 logits and the softmax were both saved, whole."""
    from megatron.core import parallel_state

    from xr_nemo.config.schema import GRPOAlgorithmConfig
    from xr_nemo.grpo import step

    monkeypatch.setattr(parallel_state, "get_tensor_model_parallel_group", lambda: None)
    monkeypatch.setattr(parallel_state, "get_tensor_model_parallel_rank", lambda: 0)
    vocab = 1000
    monkeypatch.setattr(step, "CHUNK_ELEMENTS", 2 * vocab)
    logits, labels = _logits_and_labels(vocab=vocab)
    tokens, block = labels.numel(), logits.numel() * 4
    mask = torch.ones(labels.shape)
    old = _label_logprobs(logits, labels)
    advantages = torch.linspace(-1, 1, tokens).view(labels.shape)
    batch = {**_loss_batch(old, advantages, mask), "labels": labels, "loss_mask": mask}
    batch["ref_logprobs"] = old - 0.1
    config = GRPOAlgorithmConfig(kl_coef=0.05, entropy_coef=entropy_coef)
    output = logits.clone().requires_grad_()
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with Allocations() as made:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss, _, _ = step._policy_loss(config, batch, None, 0.7, output)
        loss.backward()
    beyond_logits = sum(size for ptr, size in saved.items() if ptr != output.untyped_storage().data_ptr())
    assert beyond_logits <= 128 * tokens
    *_, second, largest = sorted(made.sizes)
    assert largest == block and second <= 2 * vocab * 4  # the logits' gradient, then a chunk's


def test_entropy_bonus_subtracts_the_token_mean_entropy_and_zero_leaves_the_loss_as_it_was():
    from xr_nemo.config.schema import GRPOAlgorithmConfig
    from xr_nemo.grpo.step import per_token_loss, vocab_parallel_logprobs

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 5), generator=generator)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    old = _label_logprobs(logits, labels) + 0.1 * torch.randn(2, 5, generator=generator, dtype=torch.float64)
    batch = _loss_batch(old, torch.randn(2, 5, generator=generator, dtype=torch.float64), mask)
    batch["ref_logprobs"] = old - 0.2
    plain = GRPOAlgorithmConfig(kl_coef=0.05)

    def loss(config, entropy_of):
        weights = logits.clone().requires_grad_()
        per_token, _, _ = per_token_loss(config, batch, _label_logprobs(weights, labels), entropy_of(weights))
        value = (per_token * batch["loss_weights"]).sum() / batch["loss_counts"].sum()
        value.backward()
        return per_token.detach(), value.detach(), weights.grad

    # the loss as it was before the bonus existed: surrogate × importance weight + kl_coef × k3
    logprobs = _label_logprobs(logits, labels)
    surrogate, _ = clipped_surrogate(logprobs, old, batch["advantages"], plain.clip_low, plain.clip_high)
    before = surrogate * truncated_importance_weights(old, old, plain.importance_cap) + 0.05 * kl_k3(
        logprobs, batch["ref_logprobs"]
    )
    unused, plain_loss, plain_grad = loss(plain, lambda w: torch.full(w.shape[:-1], math.nan))
    assert torch.equal(unused, before)  # bit for bit: the entropy is not even read

    coef = 0.3
    bonus = GRPOAlgorithmConfig(kl_coef=0.05, entropy_coef=coef)
    _, bonus_loss, bonus_grad = loss(bonus, lambda w: vocab_parallel_logprobs(w, labels, entropy=True)[1])
    reference = logits.clone().requires_grad_()
    token_mean = (torch.distributions.Categorical(logits=reference).entropy() * mask).sum() / mask.sum()
    token_mean.backward()
    assert bonus_loss.item() == pytest.approx((plain_loss - coef * token_mean).item(), abs=1e-12)
    assert torch.allclose(bonus_grad, plain_grad - coef * reference.grad, atol=1e-12)


def test_one_update_per_rollout_batch_is_the_policy_gradient_and_later_updates_clip():
    """Old log-probabilities are taken once per rollout batch. At the first update the ratio is exactly
    1, nothing is clipped and the gradient is the policy gradient −Σ A·∇log π / N; after an optimizer
    step, the next update of the same rollout batch sees ratios ≠ 1, and a token whose ratio left
    [1 − clip_low, 1 + clip_high] in the direction its advantage pushes gets no gradient."""
    from xr_nemo.config.schema import GRPOAlgorithmConfig
    from xr_nemo.grpo.step import per_token_loss

    config = GRPOAlgorithmConfig(kl_coef=0.0, importance_cap=None)
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(1, 8, 6, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 6, (1, 8), generator=generator)
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0]], dtype=torch.float64)
    mask = torch.ones(1, 8, dtype=torch.float64)
    batch = _loss_batch(_label_logprobs(weights, labels).detach(), advantages, mask)
    optimizer = torch.optim.SGD([weights], lr=2.0)

    def update():
        optimizer.zero_grad()
        logprobs = _label_logprobs(weights, labels)
        per_token, clipped, _ = per_token_loss(config, batch, logprobs, torch.zeros_like(logprobs))
        ((per_token * batch["loss_weights"]).sum() / batch["loss_counts"].sum()).backward()
        return torch.exp(logprobs - batch["old_logprobs"]).detach(), clipped, weights.grad.clone()

    def policy_gradient(keep):
        """−Σ A·ρ·∇log π / N over the tokens `keep` (ρ = 1 on the first update)."""
        probe = weights.detach().clone().requires_grad_()
        logprobs = _label_logprobs(probe, labels)
        ratio = torch.exp(logprobs - batch["old_logprobs"])
        (-(advantages * ratio * keep).sum() / mask.sum()).backward()
        return probe.grad

    ratio, clipped, gradient = update()
    assert torch.equal(ratio, torch.ones_like(ratio)) and clipped.sum() == 0
    assert torch.allclose(gradient, policy_gradient(mask), atol=1e-12)
    optimizer.step()

    ratio, clipped, gradient = update()
    beyond = ((advantages > 0) & (ratio > 1 + config.clip_high)) | (
        (advantages < 0) & (ratio < 1 - config.clip_low)
    )
    assert clipped.bool().equal(beyond) and 0 < beyond.sum() < beyond.numel()
    assert torch.allclose(gradient, policy_gradient((~beyond).double()), atol=1e-12)


def test_entropy_coef_is_off_by_default_and_cannot_be_negative():
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.config.schema import GRPOConfig
    from xr_nemo.errors import ConfigError

    assert GRPOConfig().grpo.entropy_coef == 0.0
    assert (
        apply_overrides(GRPOConfig(), ["data.train=/d", "grpo.entropy_coef=0.001"]).grpo.entropy_coef == 0.001
    )
    with pytest.raises(ConfigError, match=r"grpo\.entropy_coef=-0\.001 is out of range"):
        apply_overrides(GRPOConfig(), ["data.train=/d", "grpo.entropy_coef=-0.001"])
