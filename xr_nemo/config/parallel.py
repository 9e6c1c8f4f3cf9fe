"""How the model and the data are split over the processes of a job."""

from __future__ import annotations

from dataclasses import dataclass

from xr_nemo.errors import ConfigError


@dataclass
class ParallelConfig:
    """Megatron parallel layout. Data parallel size is what is left of the world size."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    context_parallel: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = True

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

    def data_parallel_size(self, world_size: int) -> int:
        """Validate the layout against `world_size` and return the data-parallel size."""
        for key in ("tensor_parallel", "pipeline_parallel", "context_parallel"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{key} must be a positive integer, got {value!r}",
                    where=f"parallel.{key}",
                    fix=f"set parallel.{key}=1 or a larger divisor of the world size ({world_size})",
                )
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError(
                "sequence_parallel needs tensor_parallel > 1",
                where="parallel.sequence_parallel",
                fix="set parallel.sequence_parallel=false, or parallel.tensor_parallel to 2 or more",
            )
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
