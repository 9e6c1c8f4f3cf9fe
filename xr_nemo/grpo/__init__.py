"""Stage 2: GRPO with verifiable rewards — rollouts, advantages, the clipped policy loss, refit."""
