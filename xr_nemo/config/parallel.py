"""How the model and the data are split over the processes of a job."""

from __future__ import annotations

from dataclasses import dataclass

from xr_nemo.errors import ConfigError


@dataclass
class ParallelConfig:
    """Megatron parallel layout. Data parallel size is what is left of the world size."""

    tensor_parallel: int = 1  # ranks that split every layer's matrices (within a node: it talks most)
    pipeline_parallel: int = 1  # ranks that hold consecutive slices of the layers
    context_parallel: int = 1  # ranks that split every sequence (long contexts); ring or all-to-all
    sequence_parallel: bool = False  # split the activations outside attention over the TP ranks too
    use_distributed_optimizer: bool = True  # shard the optimizer state over the data-parallel ranks

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    @property
    def sequence_multiple(self) -> int:
        """What every sequence length must be a multiple of: context parallelism cuts sequences into
        2·CP equal chunks, and sequence parallelism splits each rank's tokens over TP ranks. Training
        pads to `TrainingConfig.sequence_multiple`, which adds what FP8 needs."""
        chunks = 2 * self.context_parallel if self.context_parallel > 1 else 1
        return chunks * (self.tensor_parallel if self.sequence_parallel else 1)

    def check(self, prefix: str = "parallel.") -> None:
        """The layout's own rules, which need no world size."""
        for key in ("tensor_parallel", "pipeline_parallel", "context_parallel"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{key} must be a positive integer, got {value!r}",
                    where=f"{prefix}{key}",
                    fix=f"set {prefix}{key}=1 or a larger divisor of the world size",
                )
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError(
                "sequence_parallel needs tensor_parallel > 1",
                where=f"{prefix}sequence_parallel",
                fix=f"set {prefix}sequence_parallel=false, or {prefix}tensor_parallel to 2 or more",
            )

    def data_parallel_size(self, world_size: int) -> int:
        """Validate the layout against `world_size` and return the data-parallel size (`check` first: a
        layout built in code has not been through `validate`)."""
        self.check()
        if world_size % self.model_parallel_size != 0:
            raise ConfigError(
                f"world size {world_size} is not divisible by tensor_parallel × pipeline_parallel × "
                f"context_parallel = {self.tensor_parallel} × {self.pipeline_parallel} × "
                f"{self.context_parallel} = {self.model_parallel_size}",
                where="parallel.tensor_parallel / parallel.pipeline_parallel / parallel.context_parallel",
                fix=f"launch a multiple of {self.model_parallel_size} processes, or choose sizes whose "
                f"product divides {world_size}",
            )
        return world_size // self.model_parallel_size
