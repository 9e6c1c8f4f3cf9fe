"""Format reward: thinking closed by `</think>`, then only an answer inside `<answer>…</answer>`."""

from __future__ import annotations


def format_reward(completion: str) -> float:
    """The prompt may already open `<think>`; the completion must close it and then answer."""
    thinking, closed, rest = completion.partition("</think>")
    thinking = thinking.strip().removeprefix("<think>")
    if not closed or not thinking.strip() or "<think>" in thinking or "<think>" in rest:
        return 0.0
    rest = rest.strip()
    if not (rest.startswith("<answer>") and rest.endswith("</answer>")):
        return 0.0
    inner = rest[len("<answer>") : -len("</answer>")]
    return 1.0 if inner.strip() and "<answer>" not in inner and "</answer>" not in inner else 0.0
