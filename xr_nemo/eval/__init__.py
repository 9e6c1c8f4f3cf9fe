"""Evaluation: benchmark registry, prompts, auditable answer extraction, scoring, reports."""
