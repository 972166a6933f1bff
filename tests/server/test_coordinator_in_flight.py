"""A run killed while a training round is in flight: redone in central mode, refused on resume where the
server is not trusted with the devices' replies (local mode, secure aggregation). Nodes are faked."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coordinator_toy import FakeNodes, KillAfter, Killed, toy_coordinator

from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.update_transport import CollectedUpdates, RoundRequest
from shared.errors import ConfigError
from shared.run_folder import RunFolder
from shared.signing import Ed25519PrivateKey, generate_private_key

MODES = {
    "central": {},
    "local": {"privacy.mode": "local"},
    "secure_aggregation": {"privacy.secure_aggregation": "true"},
    "none": {"privacy.mode": "none"},
}
UNTRUSTED = ["local", "secure_aggregation"]


class KillingNodes(FakeNodes):
    """The fake nodes; the server is killed after the replies of round `kill_in` arrived (-1: never). Each
    round checks that the in-flight marker names it while the devices are queried."""

    def __init__(self, folder: RunFolder, kill_in: int = -1) -> None:
        self.folder, self.kill_in = folder, kill_in

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        marker = json.loads(self.folder.round_in_flight.read_text())
        assert marker == {"run_id": request.settings.run_id, "round": request.settings.round}
        collected = super().collect(grid, request)
        if request.settings.round == self.kill_in:
            raise Killed
        return collected


def make(
    folder: RunFolder,
    key: Ed25519PrivateKey,
    rounds: int,
    mode: str = "central",
    *,
    kill_in: int = -1,
    kill_after: int = -1,
) -> Coordinator:
    return toy_coordinator(
        folder,
        key,
        rounds,
        extra=MODES[mode],
        transport=KillingNodes(folder, kill_in),
        hooks=[KillAfter(kill_after)] if kill_after > 0 else [],
    )


def killed_in_round(folder: RunFolder, key: Ed25519PrivateKey, mode: str, round_number: int) -> Coordinator:
    first = make(folder, key, 4, mode, kill_in=round_number)
    first.resume()
    with pytest.raises(Killed):
        first.run(None, progress=False)
    return first


def ledger_rounds(folder: RunFolder) -> list[int]:
    return [entry["round"] for entry in PrivacyLedger(folder.ledger).entries()]


def test_a_central_run_killed_mid_round_redoes_the_round_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    first = killed_in_round(folder, key, "central", 3)
    assert json.loads(folder.round_in_flight.read_text()) == {"run_id": first.run_id, "round": 3}
    assert ledger_rounds(folder) == [1, 2]
    resumed = make(folder, key, 4)
    with caplog.at_level(logging.INFO, logger="server.rounds.coordinator"):
        assert resumed.resume() and resumed.state.round == 2
    assert "round 3 was in flight" in caplog.text and "redone" in caplog.text
    assert not folder.round_in_flight.exists()
    resumed.run(None, progress=False)
    assert ledger_rounds(folder) == [1, 2, 3, 4] and not folder.round_in_flight.exists()
    report = verify_ledger(folder.ledger, key.public_key())
    assert report.ok, report.problems
    straight = make(RunFolder(tmp_path / "straight"), generate_private_key(), 4)
    straight.run(None, progress=False)
    np.testing.assert_allclose(resumed.state.params, straight.state.params, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", UNTRUSTED)
def test_an_untrusted_server_run_killed_mid_round_is_not_resumed(tmp_path: Path, mode: str) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    killed_in_round(folder, key, mode, 3)
    ledger_before = folder.ledger.read_bytes()
    for _ in range(2):  # refused again on a second try: the marker stays
        with pytest.raises(ConfigError, match="round 3 was in flight") as refused:
            make(folder, key, 4, mode).resume()
        message = str(refused.value)
        assert (
            "second view" in message
            and "new run in an empty run_dir" in message
            and str(folder.ledger) in message
        )
        assert folder.round_in_flight.exists() and folder.ledger.read_bytes() == ledger_before


@pytest.mark.parametrize("mode", UNTRUSTED)
def test_an_untrusted_server_run_killed_in_its_first_round_is_not_restarted(
    tmp_path: Path, mode: str
) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    killed_in_round(folder, key, mode, 1)
    with pytest.raises(ConfigError, match="round 1 was in flight"):
        make(folder, key, 4, mode).resume()


def test_a_central_run_killed_in_its_first_round_starts_afresh(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    killed_in_round(folder, key, "central", 1)
    resumed = make(folder, key, 2)
    assert not resumed.resume() and not folder.round_in_flight.exists()
    resumed.run(None, progress=False)
    assert ledger_rounds(folder) == [1, 2]


@pytest.mark.parametrize("mode", MODES)
def test_a_run_stopped_between_rounds_resumes_in_every_mode(tmp_path: Path, mode: str) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    first = make(folder, key, 4, mode, kill_after=2)
    first.resume()
    with pytest.raises(Killed):
        first.run(None, progress=False)
    assert not folder.round_in_flight.exists()  # round 2 was committed before the hooks ran
    resumed = make(folder, key, 4, mode)
    assert resumed.resume() and resumed.state.round == 2
    resumed.run(None, progress=False)
    assert ledger_rounds(folder) == [1, 2, 3, 4] and not folder.round_in_flight.exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_marker_of_the_last_committed_round_is_removed(tmp_path: Path, mode: str) -> None:
    """Killed after the round's ledger entry was appended, before its marker was removed."""
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    first = make(folder, key, 2, mode)
    first.run(None, progress=False)
    folder.round_in_flight.write_text(json.dumps({"run_id": first.run_id, "round": 2}))
    resumed = make(folder, key, 3, mode)
    assert resumed.resume() and resumed.state.round == 2 and not folder.round_in_flight.exists()


@pytest.mark.parametrize(
    "marker",
    [{"round": 5}, {"round": 1}, {"run_id": "another-run", "round": 3}, "not a marker"],
    ids=["later", "earlier", "another run", "malformed"],
)
def test_a_stale_marker_is_refused_naming_its_file(tmp_path: Path, marker: Any) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    first = make(folder, key, 2)
    first.run(None, progress=False)
    payload = {"run_id": first.run_id, **marker} if isinstance(marker, dict) else marker
    folder.round_in_flight.write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match=r"round_in_flight\.json"):
        make(folder, key, 4).resume()
