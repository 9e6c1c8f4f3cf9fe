"""Qwen2.5-VL on megatron-core: the language model is a GPTModel with mrope, the vision tower sits on
the first pipeline stage, and image features enter as the decoder input."""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer import MegatronModule
from transformers import PretrainedConfig

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.distributed import context_parallel
from xr_nemo.models.layer_settings import LayerSettings
from xr_nemo.models.qwen25_vl.config import language_model_config
from xr_nemo.models.qwen25_vl.language_model import build_language_model
from xr_nemo.models.qwen25_vl.vision import build_vision_tower, scatter_image_features
from xr_nemo.models.specs import packed_seq_params_for


class Qwen25VLModel(MegatronModule):
    """Parameter (and checkpoint) names: `language_model.*` as megatron-core's GPTModel names them,
    `visual.*` as the Hugging Face hub names them. A later Qwen VL family overrides the three builders
    and `_decoder_inputs` (what the decoder layers take beside the embeddings)."""

    language_model_config = staticmethod(language_model_config)
    build_language_model = staticmethod(build_language_model)
    build_vision_tower = staticmethod(build_vision_tower)

    def __init__(
        self,
        hf_config: PretrainedConfig,
        parallel: ParallelConfig | None = None,
        params_dtype: torch.dtype = torch.float32,
        train_vision: bool = False,
        layers: LayerSettings | None = None,
    ) -> None:
        config, shape = self.language_model_config(hf_config, parallel, params_dtype, layers)
        super().__init__(config)
        self.model_type = ModelType.encoder_or_decoder  # read by megatron-core's pipeline schedules
        self.hf_config = hf_config  # its family's mappings, for in-memory refit
        self.image_token_id = hf_config.image_token_id
        self.pre_process = parallel_state.is_pipeline_first_stage()
        self.post_process = parallel_state.is_pipeline_last_stage()
        self.share_embeddings_and_output_weights = shape.tie_word_embeddings
        self.language_model = self.build_language_model(config, shape)
        self.visual = (
            self.build_vision_tower(hf_config.vision_config, params_dtype, train_vision)
            if self.pre_process
            else None
        )

    def set_input_tensor(self, input_tensor: torch.Tensor | list[torch.Tensor]) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self) -> torch.Tensor:
        return self.language_model.shared_embedding_or_output_weight()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab / TP] (or per-token loss given `labels`) on the last stage, hidden
        states elsewhere. `position_ids` are the 3-D mrope ids [3, batch, seq]. Attention is causal,
        within each packed sample when `packed_seq_params` gives the boundaries (`xr_nemo.data.packing`)."""
        decoder_input, block_inputs = None, None
        if self.pre_process and pixel_values is not None:
            decoder_input, block_inputs = self._embed_with_images(input_ids, pixel_values, image_grid_thw)
        return self.language_model(
            input_ids,
            position_ids,
            attention_mask,
            decoder_input=decoder_input,
            labels=labels,
            packed_seq_params=packed_seq_params_for(self.config, packed_seq_params, *input_ids.shape),
            extra_block_kwargs=block_inputs,
        )

    def _embed_with_images(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, dict | None]:
        """Token embeddings [seq, batch, hidden] (sequence-parallel split when enabled) with the image
        features in place of the image placeholders, and what the decoder layers take beside them.
        Under context parallelism the features are placed in the whole sequence, whose ids the ranks
        exchange, and each rank keeps its slice."""
        if context_parallel.size() > 1:
            with torch.no_grad():
                input_ids = context_parallel.gather_sequence(input_ids.t().contiguous()).t()
        embeddings = self.language_model.embedding(input_ids=input_ids, position_ids=None)
        if self.config.sequence_parallel:
            # The split's backward takes the local slice; the region after it is sequence-parallel.
            embeddings = tensor_parallel.gather_from_sequence_parallel_region(
                embeddings, tensor_parallel_output_grad=False
            )
        output = self.visual(pixel_values.to(next(self.visual.parameters()).dtype), grid_thw=image_grid_thw)
        by_row = scatter_image_features(
            embeddings.transpose(0, 1), input_ids, output.pooler_output, self.image_token_id
        )
        embeddings = self._local_slice(by_row.transpose(0, 1).contiguous())
        return embeddings, self._decoder_inputs(input_ids, output)

    def _decoder_inputs(self, input_ids: torch.Tensor, vision_output) -> dict | None:
        """Qwen2.5-VL's images enter through the embeddings alone."""
        return None

    def _local_slice(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's part of a [seq, batch, ...] tensor: its context-parallel chunks, then its
        sequence-parallel slice (the layout of the decoder's hidden states)."""
        local = context_parallel.split_sequence(whole, 0).contiguous()
        if self.config.sequence_parallel:
            local = tensor_parallel.scatter_to_sequence_parallel_region(local)
        return local
