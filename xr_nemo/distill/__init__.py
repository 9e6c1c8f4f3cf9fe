"""Distillation: a teacher's chains of thought, kept only when their answer is right."""
