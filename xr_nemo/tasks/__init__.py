"""Tasks: benchmark and training-data readers and their registry, prompts, answer extraction.

Shared by GRPO prompts, evaluation and distillation.
"""
