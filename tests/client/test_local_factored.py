"""Factored per-user gradients (ghost clipping) against the materialised per-user gradients they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from local_toy import MODEL, Toy, build, random_model
from torch.func import vmap

from client.training.local_batch import ChunkBatch, Negatives, build_chunk
from client.training.local_factored import FACTORED, Factored, probe_shapes
from client.training.local_loss import PREFIX, FactoredUserLoss, UserLoss, split_flat

torch.set_num_threads(1)


def materialised(toy: Toy, chunk: ChunkBatch, negatives: Negatives) -> dict[str, torch.Tensor]:
    """{name: (B, size)} each user's one-step gradient in phi, per user through vmap(grad) (the old path)."""
    updates, layout = toy.trainer.updates, toy.layout
    start = {PREFIX + n: t for n, t in split_flat(torch.from_numpy(toy.params), layout).items()}
    out = vmap(updates.one_user(start, negatives))(*chunk.tensors())
    size = chunk.items.shape[0]
    return {n: out[PREFIX + n].reshape(size, -1) * updates.scales[PREFIX + n] for n in layout.names}


@pytest.mark.parametrize(
    ("scales", "popularity"), [((), False), (("users.out_proj=0.25", "items.up=3"), False), ((), True)]
)
def test_factored_gradients_equal_the_materialised_ones(scales: tuple[str, ...], popularity: bool) -> None:
    toy = build(update_scales=scales, popularity=popularity)
    negatives = toy.trainer.negatives(5)
    users = np.arange(2, 12)  # all with examples, of different counts (padding inside the chunk)
    chunk = build_chunk(toy.trainer.examples, users, negatives.items, max_history=MODEL.max_history)
    blocks, factor = toy.trainer.updates(torch.from_numpy(toy.params), chunk, negatives)
    assert factor == -0.5  # one step: -lr
    want = materialised(toy, chunk, negatives)
    seen = []
    weights = torch.rand(users.size, generator=torch.Generator().manual_seed(0))
    for name, block in zip(toy.layout.names, blocks, strict=True):
        if isinstance(block, Factored):
            seen.append(name)
            got = block.scale * (block.left.transpose(1, 2) @ block.right).reshape(users.size, -1)
            squares = want[name].double().square().sum(dim=1)
            torch.testing.assert_close(block.squared_norms(), squares, rtol=1e-5, atol=1e-12, msg=name)
            torch.testing.assert_close(
                block.weighted_sum(weights), weights @ want[name], rtol=1e-4, atol=1e-6
            )
        else:
            got = block
        torch.testing.assert_close(got, want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert seen == [n for n in toy.layout.names if n in FACTORED] and len(seen) == len(FACTORED)


@pytest.mark.parametrize(("item_id_residual", "popularity"), [(False, False), (True, False), (False, True)])
def test_the_loss_with_probes_is_the_user_loss(item_id_residual: bool, popularity: bool) -> None:
    toy = build(popularity=popularity)
    model = random_model(item_id_residual=item_id_residual, popularity=popularity)
    negatives = toy.trainer.negatives(2)
    chunk = build_chunk(toy.trainer.examples, np.array([7]), negatives.items, max_history=MODEL.max_history)
    data = [t[0] for t in chunk.tensors()]  # the one user's inputs
    shapes = probe_shapes(model, chunk.items.shape[1], chunk.history.shape[1])
    probes = {k: torch.zeros(shape) for k, shape in shapes.items()}
    with torch.no_grad():
        want = UserLoss(model)(*data, negatives.items, negatives.log_count)
        got, rows = FactoredUserLoss(model)(probes, *data, negatives.items, negatives.log_count)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert rows["vectors"].shape == shapes["up_items"] and rows["read"].shape[0] == shapes["out_users"][0]


def test_a_factored_users_rows_can_be_zeroed() -> None:
    left, right = torch.randn(3, 4, 2), torch.randn(3, 4, 5)
    kept = Factored(left, right, 2.0).zero_rows(torch.tensor([True, False, True]))
    squares = kept.squared_norms()
    assert float(squares[1]) == 0.0 and float(squares[0]) > 0.0
    direct = 4.0 * (left[0].T @ right[0]).square().sum()
    torch.testing.assert_close(squares[0], direct.double(), rtol=1e-5, atol=0)
