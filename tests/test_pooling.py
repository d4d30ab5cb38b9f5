"""Pooling picks the final non-padding token (either padding side); mean pooling matches NumPy."""

import numpy as np
import pytest
import torch

from orm_cache.config import EncoderSpec
from orm_cache.encode.embedder import pad_batch
from orm_cache.encode.pooling import last_token_index, pool


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(right).tolist() == (right.sum(1) - 1).tolist()
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_pool_matches_float64_numpy():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    hn, mn = h.double().numpy(), mask.numpy().astype(float)
    mean_ref = (hn * mn[..., None]).sum(1) / mn.sum(1, keepdims=True)
    np.testing.assert_allclose(pool(h, mask, "mean").numpy(), mean_ref, rtol=1e-6, atol=1e-6)
    last_ref = np.stack([hn[0, 2], hn[1, 4], hn[2, 4]])
    np.testing.assert_array_equal(pool(h, mask, "last").numpy(), last_ref.astype(np.float32))
    with pytest.raises(ValueError, match="max"):
        pool(h, mask, "max")


TEXTS = ["Step 1: 3 + 4 = 7.", "A much longer trace: 12 * 6 = 72, then 72 - 5 = 67, so the answer is 67.",
         "x", "Final answer: 18 dollars because 16 - 3 - 4 = 9 and 9 * 2 = 18."]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_each_text_alone(tiny_opt_dir, side):
    """fp32 on CPU: a text's pooled vector in a padded batch equals running it alone (atol 1e-5)."""
    from orm_cache.encode.model import Encoder

    enc = Encoder(EncoderSpec(model=str(tiny_opt_dir), pooling="last,mean"), "cpu", padding_side=side)
    ids, n, _, _ = enc.tokenize(TEXTS)
    batch_ids, mask = pad_batch(ids, enc.pad_id, side)
    assert (mask.sum(1).numpy() == n).all()
    if side == "left":
        assert (batch_ids[:, 0] == enc.pad_id).any()
    batched = enc.forward(batch_ids, mask)
    for i, x in enumerate(ids):
        one_ids, one_mask = pad_batch([x], enc.pad_id, side)
        alone = enc.forward(one_ids, one_mask)
        for col in ("last@-1", "mean@-1"):
            np.testing.assert_allclose(batched[col][i].numpy(), alone[col][0].numpy(), atol=1e-5, rtol=0)
