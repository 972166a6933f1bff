"""Which rows the simulated devices train on: their training rows, or (with `federated.train_on_valid`,
the test-stage protocol of the central refit) their validation row too, never the test row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federated_toy import tiny_config

from client.node import node_model
from shared.data.split import UserSequences
from shared.run_folder import RunFolder

TEXT_DIM = 24


def last_items(rows: UserSequences, users: np.ndarray) -> np.ndarray:
    return rows.items[rows.offsets[users + 1] - 1]


@pytest.mark.parametrize("train_on_valid", [False, True])
def test_devices_train_on_their_validation_row_only_when_asked(tmp_path: Path, train_on_valid: bool) -> None:
    config = tiny_config(tmp_path, tmp_path / "cache", federated__train_on_valid=str(train_on_valid))
    folder = RunFolder(config.federated.run_dir)
    folder.item_vectors.parent.mkdir(parents=True, exist_ok=True)
    n_items = int(config.data.synthetic.n_items)
    np.save(folder.item_vectors, np.random.default_rng(0).normal(size=(n_items, TEXT_DIM)).astype(np.float32))

    node = node_model(config)
    split, rows, trainer = node.data_split(), node.rows, node.trainer
    assert rows is not None and trainer is not None  # a simulation node's
    users = split.eval_users
    assert trainer.seqs is rows
    full_lengths = split.full.lengths()[users]
    expected_last = (
        split.valid_target[users] if train_on_valid else split.full.items[split.full.offsets[users + 1] - 3]
    )
    assert np.array_equal(rows.lengths()[users], full_lengths - (1 if train_on_valid else 2))
    assert np.array_equal(last_items(rows, users), expected_last)
