"""mrope position ids against Transformers' reference `get_rope_index`."""

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from xr_nemo.errors import XrNemoError
from xr_nemo.models.qwen25_vl.rope_index import mrope_position_ids

IMAGE = 9
MERGE = 2


@pytest.fixture(scope="module")
def reference():
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 2]},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16),
        image_token_id=IMAGE,
        video_token_id=10,
    )
    return Qwen2_5_VLModel(config)


def _hf(reference, input_ids, grids, attention_mask=None):
    token_types = (input_ids == IMAGE).int()
    positions, _ = reference.get_rope_index(
        input_ids, mm_token_type_ids=token_types, image_grid_thw=grids, attention_mask=attention_mask
    )
    return positions


def _ours(input_ids, grids, attention_mask=None):
    return mrope_position_ids(
        input_ids,
        image_token_id=IMAGE,
        spatial_merge_size=MERGE,
        image_grid_thw=grids,
        attention_mask=attention_mask,
    )


def _sequence(*parts):
    tokens = []
    for part in parts:
        tokens += [IMAGE] * part if isinstance(part, int) else list(part)
    return tokens


def test_text_only_is_arange_on_all_three_axes():
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    positions = _ours(ids, None)
    assert torch.equal(positions, torch.arange(5).expand(3, 1, -1))


def test_one_image_matches_transformers(reference):
    grids = torch.tensor([[1, 4, 6]])  # 1 × 2 × 3 merged patches = 6 tokens
    ids = torch.tensor([_sequence([1, 2], 6, [3, 4, 5])])
    assert torch.equal(_ours(ids, grids), _hf(reference, ids, grids))


def test_two_images_of_different_sizes_matches_transformers(reference):
    grids = torch.tensor([[1, 4, 4], [1, 6, 2]])  # 4 and 3 tokens, each between vision start/end
    ids = torch.tensor([_sequence([1, 11], 4, [12, 2, 3, 11], 3, [12, 4])])
    assert torch.equal(_ours(ids, grids), _hf(reference, ids, grids))


def test_batch_with_padding_and_images_in_different_rows_matches_transformers(reference):
    grids = torch.tensor([[1, 4, 6], [1, 2, 4]])
    rows = [_sequence([1, 2], 6, [3]), _sequence([0, 0, 0, 0], [7], 2, [8, 6])]  # second row left-padded
    ids = torch.tensor(rows)
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    assert torch.equal(_ours(ids, grids, mask), _hf(reference, ids, grids, mask))


def test_too_few_image_tokens_is_explained():
    with pytest.raises(XrNemoError, match="needs 6 <\\|image_pad\\|> tokens, the prompt has 4"):
        _ours(torch.tensor([_sequence([1], 4, [2])]), torch.tensor([[1, 4, 6]]))


def test_missing_grid_is_explained():
    with pytest.raises(XrNemoError, match="more <\\|image_pad\\|> runs"):
        _ours(torch.tensor([_sequence([1], 1, [2], 1)]), torch.tensor([[1, 2, 2]]))
