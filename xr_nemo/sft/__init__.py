"""Stage 1: supervised fine-tuning on long chain-of-thought conversations."""
