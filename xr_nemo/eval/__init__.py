"""Evaluation: engines, generation and judging over the task registry, scoring, reports."""
