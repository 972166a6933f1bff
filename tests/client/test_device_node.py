"""A device's SuperNode that trains from its own event store (node config "train-from" = "device-store"):
the store read afresh for every message, items the catalogue does not know left out and counted, a bad store
refused, an empty one a zero update that counts, no evaluation or start check (client/node.py,
client/training/device_store.py, client/client_app.py)."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from deployment_toy import DEVICE_T0, StartRelease, publish_start_release, record_views
from federated_toy import tiny_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.client_app import (
    DEVICE_REFUSAL,
    handle_describe,
    handle_evaluate,
    handle_start_check,
    handle_train,
    handle_trending,
    make_client_app,
)
from client.device.device_folder import events_path
from client.device.event_store import EventStore
from client.device.receipts import ReceiptStore
from client.node import Node, load_node
from client.training.device_store import DeviceStore, TrainedRound, without_items
from shared.config import FedhomeConfig
from shared.data.split import UserSequences
from shared.errors import ConfigError, DataError, UpdateRejectedError
from shared.messages import (
    SAMPLE,
    EvaluateReply,
    EvaluateRequest,
    PopulationReply,
    RoundSettings,
    StartCheckRequest,
    TrainInstruction,
    TrainReply,
)
from shared.model.params import get_flat
from shared.run_folder import RunFolder

TEXT_DIM = 24
T0 = DEVICE_T0  # unix seconds of the first event
SETTINGS = RoundSettings(
    round=1, run_id="run-d", sample_rate=1.0, noise_multiplier=1.0, delta=1e-5, participation_cap=0,
    clip_norm=10.0, local_noise_multiplier=0.0, round_seed=3, noise_seed=-1,
)  # fmt: skip
STORE_NODE = "client.training.device_store"

pytestmark = pytest.mark.usefixtures("flower_task_identity")  # tests/conftest.py


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> FedhomeConfig:
    """The tiny shop's run, stating that devices train on every row they hold; 32 examples a device (its run
    folder's text embeddings are for the partition nodes: a device reads its installed release's)."""
    tmp_path = tmp_path_factory.mktemp("device-node")
    config = tiny_config(
        tmp_path,
        tmp_path / "cache",
        federated__train_on_valid="true",
        federated__max_examples_per_user="32",
        federated__nodes="3",
    )
    folder = RunFolder(config.federated.run_dir)
    folder.item_vectors.parent.mkdir(parents=True, exist_ok=True)
    n_items = int(config.data.synthetic.n_items)
    np.save(folder.item_vectors, np.random.default_rng(0).normal(size=(n_items, TEXT_DIM)).astype(np.float32))
    return config


@pytest.fixture(scope="module")
def start(config: FedhomeConfig, tmp_path_factory: pytest.TempPathFactory) -> StartRelease:
    """The run's start release over other text embeddings than the run folder's: a device's come from it."""
    text = np.random.default_rng(1).normal(size=(int(config.data.synthetic.n_items), TEXT_DIM))
    return publish_start_release(config, text.astype(np.float32), tmp_path_factory.mktemp("release"))


def device_context(device_dir: Path, start: StartRelease, **extra: str | int) -> Context:
    node_config: dict[str, bool | float | int | str] = {
        "train-from": "device-store",
        "device-dir": str(device_dir),
        "release-key": str(start.key_file),
        **extra,
    }
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict({}), run_config={})


def item_ids(node: Node) -> list[str]:
    assert node.shared.catalogue is not None
    return list(node.shared.catalogue.item_rows)


def train(node: Node, state: RecordDict, *, round_number: int, cap: int = 0) -> TrainReply:
    settings = dataclasses.replace(SETTINGS, round=round_number, participation_cap=cap)
    params = get_flat(node.shared.model, node.shared.layout)
    instruction = TrainInstruction(params, np.array([0], np.int64), settings)
    message = Message(RecordDict(instruction.to_records()), dst_node_id=1, message_type="train")
    return TrainReply.from_records(handle_train(node, message, state).content, n_sampled=1)


@pytest.fixture
def device(config: FedhomeConfig, start: StartRelease, tmp_path: Path) -> tuple[Node, list[str]]:
    """A store-backed node over a device folder with the start release installed and no event yet, and the
    catalogue's item ids."""
    node = load_node(config, device_context(start.install(tmp_path / "device"), start))
    return node, item_ids(node)


def test_a_device_node_hosts_one_user_and_describes_itself_so(device: tuple[Node, list[str]]) -> None:
    node, _ = device
    assert node.store is not None and node.users.tolist() == [0]
    message = Message(RecordDict({}), dst_node_id=1, message_type="query.describe")
    assert PopulationReply.from_records(handle_describe(node, message).content).n_users == 1
    # its own N: federated.nodes, one device each (the server's N, the describe replies' sum, is >= it)
    assert node.privacy.population == node.shared.config.federated.nodes == 3


def test_device_dir_alone_keeps_its_meaning_for_a_partition_node(
    config: FedhomeConfig, tmp_path: Path
) -> None:
    """A store in "device-dir" does not make a partition node train from it: only "train-from" does."""
    record_views(tmp_path, ["x"])
    context = Context(
        1, 1, {"partition-id": 3, "num-partitions": 40, "device-dir": str(tmp_path)}, RecordDict({}), {}
    )
    node = load_node(config, context)
    assert node.store is None and node.users.tolist() == [3]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"train-from": "phone"}, "train-from"),
        ({"device-dir": ""}, 'needs "device-dir"'),
        ({"release-key": ""}, 'needs "release-key"'),
    ],
)
def test_a_wrong_node_config_is_refused(
    config: FedhomeConfig, start: StartRelease, tmp_path: Path, extra: dict[str, str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_node(config, device_context(start.install(tmp_path), start, **extra))


def test_a_run_that_does_not_state_train_on_valid_is_refused(
    tmp_path: Path, config: FedhomeConfig, start: StartRelease
) -> None:
    held_out = dataclasses.replace(
        config, federated=dataclasses.replace(config.federated, train_on_valid=False)
    )
    with pytest.raises(ConfigError, match="train_on_valid = true"):
        load_node(held_out, device_context(start.install(tmp_path), start))


def test_a_device_trains_with_its_installed_release_and_no_data_set(
    config: FedhomeConfig, start: StartRelease, tmp_path: Path
) -> None:
    """The catalogue, text and attributes are the release's (here other text than the run folder's), the
    simulation data set is not loaded; without a verified release the device refuses, naming its folder."""
    node = load_node(config, device_context(start.install(tmp_path / "device"), start))
    assert node.shared.split is None and node.shared.catalogue is not None
    released = (
        np.load(start.folder / "item_text_int8.npy") * np.load(start.folder / "item_text_scales.npy")[:, None]
    )
    np.testing.assert_allclose(node.shared.model.items.text.numpy(), released, rtol=1e-6)
    partition = load_node(
        config, Context(1, 1, {"partition-id": 0, "num-partitions": 40}, RecordDict({}), {})
    )
    assert partition.shared.split is not None
    np.testing.assert_array_equal(
        node.shared.model.items.attributes.numpy(), partition.shared.model.items.attributes.numpy()
    )
    for damage in ("no release", "tampered"):
        folder = tmp_path / damage
        if damage == "no release":
            folder.mkdir()
        else:
            start.install(folder)
            (installed,) = (folder / "releases" / "releases").iterdir()
            with (installed / "items.json").open("ab") as out:
                out.write(b" ")
        with pytest.raises(DataError, match=re.escape(str(folder))):
            load_node(config, device_context(folder, start))


def test_events_recorded_between_rounds_are_in_the_next_rounds_examples(
    config: FedhomeConfig, start: StartRelease, tmp_path: Path
) -> None:
    """The ClientApp loads its node for every message (the process's model is cached, the store is not)."""
    folder = start.install(tmp_path / "device")
    ids = item_ids(load_node(config, device_context(folder, start)))
    record_views(folder, ids[:3])
    state = RecordDict({})
    first = train(load_node(config, device_context(folder, start)), state, round_number=1)
    record_views(folder, ids[3:6], start=3)  # the shopper goes on between rounds
    second = train(load_node(config, device_context(folder, start)), state, round_number=2)
    assert (first.count, second.count) == (1, 1)
    assert not np.allclose(first.update_sum, second.update_sum)  # same params and round seed, more examples
    log = DeviceStore(folder).training_log()
    assert [(r.run_id, r.round, r.events, r.examples) for r in log] == [
        ("run-d", 1, 3, 2),  # the first event has no history: not an example
        ("run-d", 2, 6, 5),
    ]
    receipts = ReceiptStore(folder)
    try:
        assert [(r.run_id, r.round) for r in receipts.receipts()] == [("run-d", 1), ("run-d", 2)]
    finally:
        receipts.close()


def test_unknown_items_are_left_out_and_counted_without_ids(
    device: tuple[Node, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    node, ids = device
    assert node.store is not None
    unknown = ["withdrawn-item-7", "other-shop-item-9"]
    record_views(node.store.folder, [ids[0], unknown[0], ids[1], unknown[1], ids[2]])
    with caplog.at_level(logging.DEBUG, logger=STORE_NODE):
        assert train(node, RecordDict({}), round_number=1).count == 1
    lines = [r.getMessage() for r in caplog.records if r.name == STORE_NODE]
    assert lines == [
        "left out 2 events of items the catalogue does not know, 0 of items held out of training"
    ]
    assert not any(item in line for line in caplog.messages for item in unknown)
    assert node.store.training_log()[0] == TrainedRound(
        "run-d", 1, 3, 2, node.store.training_log()[0].time_utc
    )


def test_an_empty_store_sends_a_zero_update_that_counts(device: tuple[Node, list[str]]) -> None:
    node, _ = device
    assert node.store is not None
    EventStore(events_path(node.store.folder)).close()  # the SDK created it; the shopper did nothing yet
    reply = train(node, RecordDict({}), round_number=1)
    assert reply.count == 1 and not reply.update_sum.any()
    assert [(r.events, r.examples) for r in node.store.training_log()] == [(0, 0)]


@pytest.mark.parametrize("damage", ["missing", "not sqlite", "empty file"])
def test_a_missing_or_corrupt_store_refuses_the_round_naming_the_folder(
    device: tuple[Node, list[str]], damage: str
) -> None:
    node, _ = device
    assert node.store is not None
    folder, path = node.store.folder, events_path(node.store.folder)
    if damage == "not sqlite":
        path.write_bytes(b"this is not a database, " * 100)
    elif damage == "empty file":
        path.write_bytes(b"")
    state = RecordDict({})
    with pytest.raises(DataError, match=re.escape(str(folder))):
        train(node, state, round_number=1, cap=2)
    assert len(state) == 0 and not (folder / "receipts.sqlite").exists()  # nothing counted or received
    assert node.store.training_log() == [] and (damage != "missing" or not path.exists())


def test_a_device_at_its_cap_refuses_and_logs_no_round(
    config: FedhomeConfig, start: StartRelease, tmp_path: Path
) -> None:
    folder = start.install(tmp_path / "device")
    node = load_node(config, device_context(folder, start, **{"participation-cap": 1}))
    record_views(folder, item_ids(node)[:4])
    state = RecordDict({})
    assert train(node, state, round_number=1).count == 1
    capped = train(node, state, round_number=2)
    assert (capped.count, capped.refused_count) == (0, 1)
    assert [r.round for r in DeviceStore(folder).training_log()] == [1]


def test_no_evaluation_and_no_start_check_on_a_device(device: tuple[Node, list[str]]) -> None:
    node, ids = device
    assert node.store is not None
    record_views(node.store.folder, ids[:5])
    params = get_flat(node.shared.model, node.shared.layout)
    evaluate = Message(
        EvaluateRequest(params, "valid", 5).to_records(), dst_node_id=1, message_type="evaluate"
    )
    reply = EvaluateReply.from_records(handle_evaluate(node, evaluate).content)
    assert (reply.ndcg_sum, reply.hit_sum, reply.n) == (0.0, 0.0, 0)
    request = StartCheckRequest(params, params, np.array([0], np.int64), 10.0)
    check = Message(request.to_records(), dst_node_id=1, message_type="query.start_check")
    with pytest.raises(UpdateRejectedError, match="no held-out row"):
        handle_start_check(node, check)


def test_trending_counts_the_store_as_it_is_now(device: tuple[Node, list[str]]) -> None:
    node, ids = device
    assert node.store is not None

    def trending() -> np.ndarray:
        content = RecordDict(
            {
                SAMPLE: ArrayRecord({"slots": Array(np.array([0], np.int64))}),
                "trending": ConfigRecord({"as-of-s": T0 + 86_400, "window-s": 86_400.0, "max-items": 5}),
            }
        )
        message = Message(content, dst_node_id=1, message_type="query.trending")
        reply = handle_trending(node, message, RecordDict({}))
        return reply.content.array_records["trending"]["sum"].numpy()

    record_views(node.store.folder, ids[:2])
    before = trending()
    record_views(node.store.folder, ids[2:4], start=2)
    after = trending()
    assert np.count_nonzero(before) == 2 and np.count_nonzero(after) == 4


def test_rows_of_items_held_out_of_training_are_dropped_and_counted() -> None:
    seqs = UserSequences(
        offsets=np.array([0, 3, 5], np.int64),
        items=np.array([0, 1, 2, 1, 3], np.int32),
        events=np.zeros(5, np.int8),
        timestamps=np.arange(5, dtype=np.int64),
    )
    rows, dropped = without_items(seqs, np.array([False, True, False, False]))
    assert dropped == 2 and rows.offsets.tolist() == [0, 2, 3] and rows.items.tolist() == [0, 2, 3]
    assert rows.timestamps.tolist() == [0, 2, 4]
    same, none = without_items(seqs, np.zeros(4, bool))
    assert same is seqs and none == 0


def test_what_a_device_could_not_read_stays_on_the_device(
    config: FedhomeConfig, start: StartRelease, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Flower sends an exception's text to the server: through the ClientApp, a device's refusal over its
    corrupt store says only DEVICE_REFUSAL, and the folder is named in the device's own log."""
    folder = start.install(tmp_path / "device")
    events_path(folder).write_bytes(b"this is not a database, " * 100)
    node = load_node(config, device_context(folder, start))  # the store is read per message, not here
    params = get_flat(node.shared.model, node.shared.layout)
    instruction = TrainInstruction(params, np.array([0], np.int64), SETTINGS)
    message = Message(RecordDict(instruction.to_records()), dst_node_id=1, message_type="train")
    with caplog.at_level(logging.ERROR), pytest.raises(UpdateRejectedError) as refused:
        make_client_app(config)(message, device_context(folder, start))
    assert str(refused.value) == DEVICE_REFUSAL and str(folder) not in str(refused.value)
    assert any(str(folder) in line for line in caplog.messages)
