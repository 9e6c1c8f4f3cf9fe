"""Test-only scaffolding: benchmark fixtures, a tiny GPT, subprocess helpers, VL inputs."""
