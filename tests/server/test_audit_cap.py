"""`fedhome-audit verify` on capped runs: both bounds recomputed, the claimed min checked, tampers caught."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from ledger_toy import DELTA, KEY, Tweak, round_fields
from scipy.optimize import brentq
from scipy.stats import norm

from server.audit.audit_report import build_report
from server.audit.report_html import render_html
from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.rounds.cap_fields import cap_ledger_fields
from shared import signing
from shared.privacy.accounting import RoundEvent, UserLevelAccountant
from shared.privacy.capped_accounting import CappedAccountant


def write_capped_run(
    folder: Path,
    *,
    cap: int,
    rounds: int = 6,
    q: float = 0.5,
    z: float = 1.0,
    resume_after: int = 0,
    uncapped_rounds: tuple[int, ...] = (),
    tweak: Tweak | None = None,
) -> Path:
    """A capped run's ledger written as the ServerApp writes it (a resume after round `resume_after`
    starts a new cap segment; rounds in `uncapped_rounds` are accounted as the cap does not limit them)."""
    folder.mkdir(parents=True, exist_ok=True)
    accountant = CappedAccountant(delta=DELTA, participation_cap=cap)
    ledger = PrivacyLedger(folder / "ledger.jsonl", signing_key=KEY)
    for r in range(1, rounds + 1):
        if resume_after and r == resume_after + 1:
            accountant.new_segment()
        capped = r not in uncapped_rounds
        accountant.record(RoundEvent(sample_rate=q, noise_multiplier=z, capped=capped))
        fields = round_fields(r, accountant, q=q, z=z, mode="central")
        if capped:
            fields.update(cap_ledger_fields(accountant, refused_users=r // 2))
        if tweak is not None:
            tweak(r, fields)
        ledger.append(fields)
    signing.save_public_key(KEY.public_key(), folder / "ledger_public_key.pem")
    return folder


def gaussian_epsilon(z: float, k: int, delta: float) -> float:
    """The exact epsilon of k composed Gaussian mechanisms (Balle & Wang 2018), independent of both sides."""
    mu = math.sqrt(k) / z
    return float(
        brentq(
            lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 500
        )
    )


def poisson_epsilon(rounds: int, *, q: float = 0.5, z: float = 1.0) -> float:
    plain = UserLevelAccountant(delta=DELTA)
    for _ in range(rounds):
        plain.record(RoundEvent(sample_rate=q, noise_multiplier=z))
    return plain.spent()["pld"]


@pytest.mark.integration
def test_a_capped_run_verifies_and_the_auditor_recomputes_the_cap_bound(tmp_path: Path) -> None:
    report = verify_ledger(write_capped_run(tmp_path / "run", cap=2), KEY.public_key())
    assert report.ok, report.problems
    assert report.participation_cap == 2
    assert report.recomputed_cap_epsilon == pytest.approx(gaussian_epsilon(1.0, 2, DELTA), rel=1e-3)
    assert report.recomputed_poisson_epsilon == pytest.approx(poisson_epsilon(6), rel=1e-3)
    cap, poisson = report.recomputed_cap_epsilon, report.recomputed_poisson_epsilon
    assert cap is not None and poisson is not None
    assert report.recomputed_epsilon == cap < poisson
    assert report.claimed_epsilon == pytest.approx(report.recomputed_epsilon, rel=1e-3)


@pytest.mark.integration
def test_with_a_large_cap_the_poisson_bound_binds(tmp_path: Path) -> None:
    run = write_capped_run(tmp_path / "run", cap=6)
    report = verify_ledger(run, KEY.public_key())
    assert report.ok, report.problems
    cap, poisson = report.recomputed_cap_epsilon, report.recomputed_poisson_epsilon
    assert cap is not None and poisson is not None
    assert report.recomputed_epsilon == poisson < cap
    built = build_report(run, KEY.public_key())
    assert built["guarantee"]["participation_cap"]["binding"] == "poisson"
    assert "6" in built["guarantee"]["participation_cap"]["statement"]
    page = render_html(built)
    assert "Participation cap" in page and "the poisson bound" in page


@pytest.mark.integration
def test_resume_segments_and_uncapped_rounds_are_recomputed_alike(tmp_path: Path) -> None:
    run = write_capped_run(tmp_path / "run", cap=2, rounds=12, resume_after=6, uncapped_rounds=(3,))
    report = verify_ledger(run, KEY.public_key())
    assert report.ok, report.problems
    assert report.recomputed_cap_epsilon is not None
    assert report.recomputed_cap_epsilon > gaussian_epsilon(1.0, 4, DELTA)  # 2 + 2 rounds, and round 3
    built = build_report(run, KEY.public_key())
    assert built["guarantee"]["participation_cap"]["binding"] == "cap"
    assert built["rounds"][-1]["participation_cap"] == 2 and built["rounds"][-1]["epsilon_bound"] == "cap"


def _cap_three(r: int, fields: dict[str, Any]) -> None:
    if r == 4:
        fields["participation_cap"] = 3


def _understated_cap_bound(r: int, fields: dict[str, Any]) -> None:
    fields["user_epsilon_cap"]["pld"] *= 0.9
    fields["user_epsilon"]["pld"] = fields["user_epsilon_cap"]["pld"]


def _wrong_binding(r: int, fields: dict[str, Any]) -> None:
    fields["epsilon_bound"] = "poisson"


def _segment_jump(r: int, fields: dict[str, Any]) -> None:
    if r >= 3:
        fields["cap_segment"] = 3


def _segment_zero(r: int, fields: dict[str, Any]) -> None:
    fields["cap_segment"] = 0  # segments start at 1 (CappedAccountant)


def _cap_removed_claim_kept(r: int, fields: dict[str, Any]) -> None:
    for name in ("participation_cap", "cap_segment", "user_epsilon_poisson", "user_epsilon_cap"):
        fields.pop(name)


@pytest.mark.parametrize(
    ("tweak", "says"),
    [
        (_cap_three, "participation_cap"),
        (_understated_cap_bound, "user_epsilon_cap"),
        (_wrong_binding, "epsilon_bound"),
        (_segment_jump, "cap_segment"),
        (_segment_zero, "cap_segment"),
        (_cap_removed_claim_kept, "claimed PLD epsilon"),
    ],
)
@pytest.mark.integration
def test_a_tampered_cap_or_bound_fails_even_when_re_signed(tmp_path: Path, tweak: Tweak, says: str) -> None:
    report = verify_ledger(write_capped_run(tmp_path / "run", cap=2, tweak=tweak), KEY.public_key())
    assert not report.ok
    assert any(says in problem for problem in report.problems), report.problems


def _overstated_cap_bound(r: int, fields: dict[str, Any]) -> None:
    fields["user_epsilon_cap"]["pld"] *= 1.2  # conservative: the claimed minimum is still the Poisson one


@pytest.mark.integration
def test_an_overstated_cap_bound_passes_with_a_note(tmp_path: Path) -> None:
    run = write_capped_run(tmp_path / "run", cap=6, tweak=_overstated_cap_bound)
    report = verify_ledger(run, KEY.public_key())
    assert report.ok, report.problems
    assert any("participation-cap bound(s) claimed above" in note for note in report.notes), report.notes
