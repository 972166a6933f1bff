"""The ServerApp's first wait, for `federated.nodes` SuperNodes to connect: short, and a clear error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import pytest
from flwr.serverapp import Grid

from server.rounds.messaging import NodesNotConnectedError, wait_for_nodes
from server.server_app import run_training, write_config
from shared.config import FedhomeConfig, to_flat, with_overrides
from shared.errors import ConfigError
from shared.run_folder import RunFolder, write_json_atomic


class ConnectingGrid:
    """A Grid whose nodes connect one by one, one more each call of get_node_ids, up to `most`. It has
    nothing else: a ServerApp that goes past the wait fails on a missing method."""

    def __init__(self, most: int) -> None:
        self.most, self.calls = most, 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return [100 - n for n in range(min(self.most, self.calls))]


def connecting(most: int) -> Grid:
    return cast(Grid, ConnectingGrid(most))


def test_waits_until_enough_nodes_connect_and_returns_them_sorted() -> None:
    assert wait_for_nodes(connecting(3), 3, timeout_s=30) == [98, 99, 100]


@pytest.mark.parametrize(
    ("connected", "expected", "hint"),
    [
        (1, 2, "start 1 more SuperNode(s) on this SuperLink, each with its own --node-config partition-id, "
               "or lower federated.nodes to 1"),
        (0, 3, "start 3 more SuperNode(s) on this SuperLink, each with its own --node-config partition-id"),
    ],
)  # fmt: skip
def test_too_few_nodes_is_a_clear_error_saying_how_many_and_what_to_do(
    connected: int, expected: int, hint: str
) -> None:
    with pytest.raises(NodesNotConnectedError) as caught:
        wait_for_nodes(connecting(connected), expected, timeout_s=0.3)
    message = str(caught.value)
    assert message.startswith(f"{connected} of the {expected} SuperNodes this run needs (federated.nodes)")
    assert "within 0.3 s (federated.connect_timeout_s)" in message
    assert message.endswith(hint)
    assert "lower federated.nodes to 0" not in message
    assert isinstance(caught.value, ConfigError)  # entry points print it as a config error, no traceback


def test_the_server_app_fails_within_connect_timeout_not_node_timeout(tmp_path: Path) -> None:
    config = with_overrides(
        FedhomeConfig(),
        {
            "federated.nodes": 2,
            "federated.connect_timeout_s": 0.5,
            "federated.node_timeout_s": 600.0,
            "federated.run_dir": str(tmp_path / "run"),
        },
    )
    start = time.monotonic()
    with pytest.raises(NodesNotConnectedError, match=r"^1 of the 2 SuperNodes .* within 0.5 s"):
        run_training(connecting(1), config, evaluator=None, progress=False)
    assert time.monotonic() - start < 10  # before the catalogue is embedded, and not after 600 s


@pytest.mark.parametrize("key", ["federated.connect_timeout_s", "federated.node_timeout_s"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_timeouts_must_be_positive(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        with_overrides(FedhomeConfig(), {key: value})


def test_a_resume_may_change_the_timeouts_and_a_folder_from_before_connect_timeout_resumes(
    tmp_path: Path,
) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.create()
    config = with_overrides(FedhomeConfig(), {"federated.run_dir": str(folder.root)})
    older = {k: v for k, v in to_flat(config).items() if k != "federated.connect_timeout_s"}
    write_json_atomic(folder.config, older)  # written before the setting existed
    write_config(with_overrides(config, {"federated.node_timeout_s": 30.0}), folder)
    with pytest.raises(ConfigError, match=r"federated\.nodes"):
        write_config(with_overrides(config, {"federated.nodes": 3}), folder)
