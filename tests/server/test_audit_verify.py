"""`fedhome-audit verify`: a genuine ledger passes; every kind of tampering or misstatement fails."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from coordinator_toy import toy_coordinator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_toy import DELTA, KEY, Tweak, write_run

from server import server_cli
from server.audit import audit_cli
from server.audit.accountant import RoundByRoundPLD
from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from shared import signing
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.run_folder import RunFolder


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"))


def lines_of(run: Path) -> list[bytes]:
    return (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)


def tampered_copy(run: Path, tmp_path: Path, lines: list[bytes]) -> Path:
    copy = tmp_path / "tampered"
    copy.mkdir()
    (copy / "ledger.jsonl").write_bytes(b"".join(lines))
    return copy


def test_genuine_ledger_passes_on_a_copy_with_only_the_public_key(good_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(good_run, copy)
    report = verify_ledger(copy, signing.load_public_key(copy / "ledger_public_key.pem"))
    assert report.ok, report.problems
    assert report.entries == 4 and len(report.epsilons) == 4 and report.delta == DELTA
    assert report.head_hash == PrivacyLedger(copy / "ledger.jsonl").head_hash()
    assert report.recomputed_epsilon == pytest.approx(report.claimed_epsilon, rel=1e-3)
    rdp, pld = report.recomputed_rdp_epsilon, report.recomputed_epsilon
    assert rdp is not None and pld is not None and rdp >= pld


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), flip=st.integers(1, 255))
@pytest.mark.integration
def test_any_flipped_byte_fails(good_run: Path, position: int, flip: int) -> None:
    raw = bytearray((good_run / "ledger.jsonl").read_bytes())
    raw[position % len(raw)] ^= flip
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "ledger.jsonl").write_bytes(bytes(raw))
        assert not verify_ledger(Path(folder), KEY.public_key()).ok


@pytest.mark.parametrize("removed", [0, 1, 2])
def test_a_removed_entry_fails(good_run: Path, tmp_path: Path, removed: int) -> None:
    lines = lines_of(good_run)
    del lines[removed]
    report = verify_ledger(tampered_copy(good_run, tmp_path, lines), KEY.public_key())
    assert not report.ok and any("prev_hash" in p for p in report.problems)


def test_reordered_entries_fail(good_run: Path, tmp_path: Path) -> None:
    lines = lines_of(good_run)
    lines[1], lines[2] = lines[2], lines[1]
    report = verify_ledger(tampered_copy(good_run, tmp_path, lines), KEY.public_key())
    assert not report.ok and any("round 3 (line 2)" in p for p in report.problems)


def test_a_wrong_public_key_fails(good_run: Path) -> None:
    report = verify_ledger(good_run, signing.generate_private_key().public_key())
    assert not report.ok
    assert sum("signature does not verify" in p for p in report.problems) == 4
    assert any("key_id" in p for p in report.problems)


def test_a_semantically_equal_but_rewritten_line_fails(good_run: Path, tmp_path: Path) -> None:
    lines = lines_of(good_run)
    lines[1] = json.dumps(json.loads(lines[1])).encode() + b"\n"  # same values, other spacing
    report = verify_ledger(tampered_copy(good_run, tmp_path, lines), KEY.public_key())
    assert report.problems == ["line 2: not in canonical JSON form (edited after writing?)"]


@pytest.mark.parametrize("field", [b'"sample_rate":0.05', b'"noise_std":0.5', b'"round":2'])
@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"1e999", b"9" * 400, b'"0.05"', b"true"])
@pytest.mark.integration
def test_non_numbers_where_numbers_belong_are_problems_not_crashes(
    good_run: Path, tmp_path: Path, field: bytes, value: bytes
) -> None:
    lines = lines_of(good_run)
    name = field.split(b":")[0]
    assert field in lines[1]
    lines[1] = lines[1].replace(field, name + b":" + value)
    report = verify_ledger(tampered_copy(good_run, tmp_path, lines), KEY.public_key())
    assert not report.ok and any(p.startswith(("line 2", "round")) for p in report.problems)


@pytest.mark.parametrize(
    ("field", "value"),
    [(b'"sample_rate":0.05', b"1.5"), (b'"sample_rate":0.05', b"0"), (b'"noise_std":0.5', b"-0.5"),
     (b'"delta":1e-05', b"1"), (b'"noise_multiplier":1.0', b"-1.0")],
)  # fmt: skip
@pytest.mark.integration
def test_out_of_range_values_are_problems_not_crashes(
    good_run: Path, tmp_path: Path, field: bytes, value: bytes
) -> None:
    lines = lines_of(good_run)
    lines[1] = lines[1].replace(field, field.split(b":")[0] + b":" + value)
    report = verify_ledger(tampered_copy(good_run, tmp_path, lines), KEY.public_key())
    assert any("out of range" in p for p in report.problems)


def test_a_truncated_last_line_fails(good_run: Path, tmp_path: Path) -> None:
    lines = lines_of(good_run)
    lines[-1] = lines[-1][:-40]
    report = verify_ledger(tampered_copy(good_run, tmp_path, lines), KEY.public_key())
    assert not report.ok and any("line 4: incomplete last line" in p for p in report.problems)


def test_an_understated_epsilon_fails_even_with_a_valid_chain(tmp_path: Path) -> None:
    def understate(r: int, fields: dict[str, Any]) -> None:
        if r == 3:
            fields["user_epsilon"]["pld"] *= 0.95

    report = verify_ledger(write_run(tmp_path / "run", tweak=understate), KEY.public_key())
    assert not report.ok
    assert (
        len(report.problems) == 1 and "round 3" in report.problems[0] and "claimed PLD" in report.problems[0]
    )


def test_misstated_noise_fails(tmp_path: Path) -> None:
    def less_noise(r: int, fields: dict[str, Any]) -> None:
        fields["noise_std"] = fields["noise_std"] * 0.9

    report = verify_ledger(write_run(tmp_path / "run", rounds=2, tweak=less_noise), KEY.public_key())
    assert not report.ok and all("noise_std" in p for p in report.problems) and len(report.problems) == 2


def test_rdp_below_pld_non_poisson_sampling_and_wrong_divisor_fail(tmp_path: Path) -> None:
    def tweak(r: int, fields: dict[str, Any]) -> None:
        fields["user_epsilon"]["rdp"] = fields["user_epsilon"]["pld"] * 0.5
        fields["sampling"] = "fixed-size"
        fields["expected_cohort"] = 97  # the realised count, not q * N

    report = verify_ledger(write_run(tmp_path / "run", rounds=1, tweak=tweak), KEY.public_key())
    assert len(report.problems) == 3
    assert any("RDP" in p for p in report.problems) and any("Poisson" in p for p in report.problems)
    assert any("expected_cohort" in p for p in report.problems)


def test_mode_none_is_infinite_epsilon(tmp_path: Path) -> None:
    run = write_run(tmp_path / "none", rounds=3, z=0.0, mode="none")
    report = verify_ledger(run, KEY.public_key())
    assert report.ok, report.problems
    assert report.to_dict()["recomputed_epsilon"] == "inf"

    def finite_claim(r: int, fields: dict[str, Any]) -> None:
        fields["user_epsilon"] = {"pld": 3.0, "rdp": 4.0}

    assert not verify_ledger(
        write_run(tmp_path / "lie", z=0.0, mode="none", tweak=finite_claim), KEY.public_key()
    ).ok


def adaptive(count_std: float, *, charge_count: bool) -> Tweak:
    """Adaptive clipping (Andrew et al.): part of the budget pays for the noisy count."""

    def tweak(r: int, fields: dict[str, Any]) -> None:
        z = fields["noise_multiplier"]
        z_update = (z**-2 - (2 * count_std) ** -2) ** -0.5 if charge_count else z
        fields.update(update_noise_multiplier=z_update, noise_std=z_update * 0.5, count_noise_std=count_std)

    return tweak


def test_adaptive_clipping_noise_is_checked_against_the_accounted_multiplier(tmp_path: Path) -> None:
    honest = write_run(tmp_path / "honest", rounds=2, tweak=adaptive(5.0, charge_count=True))
    assert verify_ledger(honest, KEY.public_key()).ok
    uncharged = write_run(tmp_path / "uncharged", rounds=2, tweak=adaptive(5.0, charge_count=False))
    report = verify_ledger(uncharged, KEY.public_key())
    assert not report.ok and all("exceeds what the applied noise supports" in p for p in report.problems)


def test_entries_cut_off_at_the_end_need_the_pinned_head(good_run: Path, tmp_path: Path) -> None:
    head = verify_ledger(good_run, KEY.public_key()).head_hash
    cut = tampered_copy(good_run, tmp_path, lines_of(good_run)[:-1])
    assert verify_ledger(cut, KEY.public_key()).ok  # a hash chain alone cannot see a cut tail
    report = verify_ledger(cut, KEY.public_key(), expected_head=head)
    assert not report.ok and "cut off" in report.problems[0]


@pytest.mark.integration
def test_auditor_pld_matches_golden_and_the_writer_on_mixed_rounds() -> None:
    pld = RoundByRoundPLD()
    events = [RoundEvent(sample_rate=0.05, noise_multiplier=1.0)] * 60 + [
        RoundEvent(sample_rate=0.02, noise_multiplier=1.4)
    ] * 40
    for event in events:
        pld.add_round(sample_rate=event.sample_rate, noise_multiplier=event.noise_multiplier)
    assert pld.epsilon(delta=1e-6) == pytest.approx(pld_epsilon(events, delta=1e-6), rel=1e-3)
    golden = RoundByRoundPLD()
    for _ in range(100):
        golden.add_round(sample_rate=0.05, noise_multiplier=1.0)
    assert golden.epsilon(delta=1e-6) == pytest.approx(4.11, abs=0.006)


def test_cli_exit_codes_and_reports(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(good_run / "ledger_public_key.pem")
    assert audit_cli.main(["verify", str(good_run), "--public-key", key]) == 0
    assert "OK" in capsys.readouterr().out
    assert audit_cli.main(["verify", str(good_run), "--public-key", key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    lines = lines_of(good_run)
    bad = tampered_copy(good_run, tmp_path, [lines[0], lines[2], lines[3]])
    assert audit_cli.main(["verify", str(bad), "--public-key", key]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert audit_cli.main(["verify", str(tmp_path / "nothing"), "--public-key", key]) == 2
    assert audit_cli.main(["verify", str(good_run), "--public-key", str(tmp_path / "no.pem")]) == 2
    with pytest.raises(SystemExit) as usage:
        audit_cli.main(["verify", str(good_run)])
    assert usage.value.code == 2


def test_cli_says_a_wrong_public_key_in_one_line(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.pem"
    signing.save_public_key(signing.generate_private_key().public_key(), other)
    assert audit_cli.main(["verify", str(good_run), "--public-key", str(other)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    assert out[0].startswith(f"FAILED: the public key {other} (key id ")
    assert "does not match the ledger's signatures" in out[0]
    assert f"name key id {signing.key_id(KEY.public_key())}" in out[0]  # where to find the right key
    report = verify_ledger(good_run, signing.load_public_key(other))
    assert report.key_mismatch and report.ledger_key_ids == [signing.key_id(KEY.public_key())]


def test_cli_lists_each_problem_when_only_some_entries_verify(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(good_run)
    lines[1] = lines[1].replace(b'"noise_std":0.5', b'"noise_std":0.25')  # real tampering: one entry
    bad = tampered_copy(good_run, tmp_path, lines)
    assert not verify_ledger(bad, KEY.public_key()).key_mismatch
    key = str(good_run / "ledger_public_key.pem")
    assert audit_cli.main(["verify", str(bad), "--public-key", key]) == 1
    out = capsys.readouterr().out
    assert "round 2 (line 2): signature does not verify with the given public key" in out
    assert "does not match the ledger's signatures" not in out


def test_keygen_writes_a_key_pair_and_prints_only_the_key_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server_cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    out = capsys.readouterr().out
    private = signing.load_private_key(tmp_path / "keys" / "ledger_signing_key.pem")
    public = signing.load_public_key(tmp_path / "keys" / "ledger_signing_key.pub.pem")
    assert (
        json.loads(out)
        == {"key_id": signing.key_id(public)}
        == {"key_id": signing.key_id(private.public_key())}
    )
    assert stat.S_IMODE((tmp_path / "keys" / "ledger_signing_key.pem").stat().st_mode) == 0o600
    before = (tmp_path / "keys" / "ledger_signing_key.pem").read_bytes()
    assert server_cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 2  # never overwrites
    assert (tmp_path / "keys" / "ledger_signing_key.pem").read_bytes() == before


def with_budget(target: float, planned: int) -> Tweak:
    """Each round records the run's budget, as the ServerApp writes it (server/ledger.py)."""

    def tweak(r: int, fields: dict[str, Any]) -> None:
        fields["target_epsilon"], fields["planned_rounds"] = target, planned

    return tweak


def test_a_run_within_its_recorded_budget_passes_and_the_report_carries_it(tmp_path: Path) -> None:
    report = verify_ledger(write_run(tmp_path / "run", rounds=4, tweak=with_budget(8.0, 4)), KEY.public_key())
    assert report.ok, report.problems
    assert (report.target_epsilon, report.planned_rounds) == (8.0, 4)
    assert verify_ledger(write_run(tmp_path / "old", rounds=4), KEY.public_key()).target_epsilon is None


def test_spending_past_the_recorded_budget_fails_the_audit(tmp_path: Path) -> None:
    """Four rounds at q 0.05 and z 1 spend more than epsilon 0.1: signed, accounted and claimed correctly,
    and still past the budget the same entries state."""
    four = pld_epsilon([RoundEvent(sample_rate=0.05, noise_multiplier=1.0)] * 4, delta=DELTA)
    assert four > 0.1
    report = verify_ledger(write_run(tmp_path / "run", rounds=4, tweak=with_budget(0.1, 4)), KEY.public_key())
    assert not report.ok
    assert any("past the run's recorded budget of 0.1" in p for p in report.problems), report.problems


def test_a_round_past_the_plan_and_a_budget_raised_mid_run_fail_the_audit(tmp_path: Path) -> None:
    past = verify_ledger(write_run(tmp_path / "past", rounds=4, tweak=with_budget(8.0, 3)), KEY.public_key())
    assert any("round 4" in p and "past the 3 rounds the run was planned over" in p for p in past.problems)

    def raised(r: int, fields: dict[str, Any]) -> None:
        fields["target_epsilon"], fields["planned_rounds"] = (8.0 if r < 3 else 16.0), 4

    report = verify_ledger(write_run(tmp_path / "raised", rounds=4, tweak=raised), KEY.public_key())
    assert any("the recorded budget changes within the run" in p for p in report.problems), report.problems


def test_the_coordinator_records_the_budget_on_every_round(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    coordinator = toy_coordinator(run, KEY, 3)
    coordinator.resume()
    coordinator.run(None, progress=False)
    entries = [json.loads(line) for line in run.ledger.read_text().splitlines()]
    assert [(e["target_epsilon"], e["planned_rounds"]) for e in entries] == [(100.0, 3)] * 3
    report = verify_ledger(run.root, KEY.public_key())
    assert report.ok and report.target_epsilon == 100.0, report.problems
