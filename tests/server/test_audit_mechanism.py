"""`fedhome-audit` checks of the mechanism beyond single entries (issue 16): the realised cohorts disperse
like Poisson sampling, a claimed epsilon may be conservative but never understated, local-mode entries
describe local DP and the report gives each report's own epsilon, and a ledger nothing pins says that its
end could have been cut off."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ledger_toy import KEY, Tweak, write_run
from scipy.optimize import brentq
from scipy.stats import binom, norm

from server.audit import audit_cli
from server.audit.audit_report import build_report
from server.audit.cohorts import FALSE_ALARM, _log_tail_bound, _test, cohort_check, cohort_dispersion
from server.audit.local_dp import report_epsilon
from server.audit.report_html import render_html
from server.audit.verify import TRUNCATION_NOTE, verify_ledger

DEMO_DELTA = 3000**-1.1  # the demo run: N = 3,000 users, delta = N^-1.1
DEMO_Z = 0.5909  # its local noise multiplier, "z = 0.59" rounded in issue 16


def cohorts(*sizes: int) -> Tweak:
    """Realised cohorts cycling through `sizes` (a sampler that is not Poisson)."""

    def tweak(r: int, fields: dict[str, Any]) -> None:
        fields["realised_cohort"] = fields["aggregated_users"] = sizes[(r - 1) % len(sizes)]

    return tweak


def entries_of(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]


# --- cohort dispersion --------------------------------------------------------------------------------


def test_a_constant_cohort_fails_verify(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=12, tweak=cohorts(100))  # q*N = 100 in every round
    assert cohort_check(entries_of(run)) == 0.0  # the summed deviation cannot see it
    report = verify_ledger(run, KEY.public_key())
    assert not report.ok
    assert len(report.problems) == 1 and "vary too little for Poisson sampling" in report.problems[0]
    assert [row["verdict"] for row in report.cohort_dispersion] == ["too small"]


def test_cohorts_that_swing_too_much_fail_verify(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=12, tweak=cohorts(60, 140))  # mean exactly q*N
    assert cohort_check(entries_of(run)) == 0.0
    report = verify_ledger(run, KEY.public_key())
    assert not report.ok and len(report.problems) == 1 and "vary too much" in report.problems[0]


def test_genuine_poisson_cohorts_pass_and_are_decided(tmp_path: Path) -> None:
    report = verify_ledger(write_run(tmp_path / "run", rounds=12), KEY.public_key())
    assert report.ok, report.problems
    (row,) = report.cohort_dispersion
    assert row["verdict"] == "ok" and row["rounds"] == 12 and row["population"] == 2000
    assert not [note for note in report.notes if "cohort" in note]


def test_too_few_rounds_to_decide_are_said_not_passed_silently(tmp_path: Path) -> None:
    report = verify_ledger(write_run(tmp_path / "run", rounds=4, tweak=cohorts(100)), KEY.public_key())
    assert report.ok, report.problems  # four equal cohorts are not improbable enough to fail a run
    assert [row["verdict"] for row in report.cohort_dispersion] == ["undecided"]
    assert any("cohort dispersion undecided" in n and "(10 needed)" in n for n in report.notes), report.notes


def test_how_many_equal_cohorts_it_takes_as_docs_audit_md_says() -> None:
    assert _test(0.05, 2000, [100] * 4).verdict == "undecided"
    five, twelve = _test(0.05, 2000, [100] * 5), _test(0.05, 2000, [100] * 12)
    assert five.verdict == twelve.verdict == "too small"
    assert five.p_too_small is not None and 1e-7 < five.p_too_small < 2e-7
    assert twelve.p_too_small is not None and twelve.p_too_small < 3e-17
    assert _test(0.1, 12, [1] * 14).rounds_needed == 15
    assert _test(0.1, 12, [1] * 14).verdict == "undecided" and _test(0.1, 12, [1] * 15).verdict == "too small"


def test_groups_are_tested_apart_and_rate_one_takes_everyone() -> None:
    rng = np.random.default_rng(5)
    entries: list[dict[str, Any]] = [
        {
            "round": r,
            "sample_rate": 0.05,
            "population": 2000,
            "realised_cohort": int(rng.binomial(2000, 0.05)),
        }
        for r in range(1, 13)
    ] + [{"round": r, "sample_rate": 0.3, "population": 2000, "realised_cohort": 600} for r in range(13, 25)]
    entries += [{"kind": "trending_counts", "after_round": 24, "sample_rate": 1.0, "population": 2000,
                 "realised_cohort": 1999}]  # fmt: skip
    problems: list[str] = []
    rows = cohort_dispersion(entries, problems, [])
    assert [(r.sample_rate, r.verdict) for r in rows] == [
        (0.05, "ok"),
        (0.3, "too small"),
        (1.0, "not everyone"),
    ]
    assert len(problems) == 2


def test_the_chernoff_bounds_are_never_below_the_exact_tail_probabilities() -> None:
    """Exact distribution of T for 3 rounds of Binomial(12, q), by enumeration, against the bounds."""
    for q in (0.1, 0.5):
        n, m = 12, 3
        k = np.arange(n + 1, dtype=np.float64)
        log_pmf, x = binom.logpmf(k, n, q), (k - q * n) ** 2 / (n * q * (1 - q))
        totals: dict[float, float] = {}
        for combo in itertools.product(range(n + 1), repeat=m):
            t = round(float(sum(x[c] for c in combo)), 9)
            totals[t] = totals.get(t, 0.0) + float(np.exp(sum(log_pmf[c] for c in combo)))
        values = sorted(totals)
        for t in values[:: max(1, len(values) // 40)]:
            below = sum(p for v, p in totals.items() if v <= t)
            above = sum(p for v, p in totals.items() if v >= t)
            # t is rounded: the bounds at t +- 1e-7 bound P(T <= t) and P(T >= t) of the unrounded T
            assert math.exp(_log_tail_bound(log_pmf, x, m, t + 1e-7, lower=True)) >= below * (1 - 1e-9)
            assert math.exp(_log_tail_bound(log_pmf, x, m, t - 1e-7, lower=False)) >= above * (1 - 1e-9)


@pytest.mark.parametrize(("n", "q", "rounds"), [(12, 0.1, 30), (40, 0.5, 20), (2000, 0.05, 15)])
@pytest.mark.integration
def test_binomial_cohorts_never_fail_and_a_constant_one_always_does(n: int, q: float, rounds: int) -> None:
    """No false alarm in 100 genuine runs, for small populations too (where a chi-square approximation of
    the statistic would raise them far more often than its nominal level); a constant cohort fails."""
    rng = np.random.default_rng(n)
    for _ in range(100):
        result = _test(q, n, [int(c) for c in rng.binomial(n, q, rounds)])
        assert result.verdict in ("ok", "undecided")
        assert result.p_too_small is not None and result.p_too_large is not None
        assert min(result.p_too_small, result.p_too_large) > FALSE_ALARM
    constant = _test(q, n, [round(q * n)] * 40)
    assert constant.verdict == "too small", constant


def test_the_report_fails_a_constant_cohort_and_shows_the_test(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=12, tweak=cohorts(100))
    report = build_report(run, KEY.public_key())
    assert not report["verification"]["ok"]
    assert [m for m in report["mismatches"] if "vary too little" in m]
    assert report["verification"]["cohort_dispersion"][0]["verdict"] == "too small"
    json.dumps(report, allow_nan=False)
    html = render_html(report)
    assert "id='cohort-dispersion'" in html and "too small" in html and "No mismatch found" not in html


# --- one-sided epsilon tolerance ----------------------------------------------------------------------


def scale_pld(factor: float) -> Tweak:
    def tweak(r: int, fields: dict[str, Any]) -> None:
        fields["user_epsilon"]["pld"] *= factor
        fields["user_epsilon"]["rdp"] = max(fields["user_epsilon"]["rdp"], fields["user_epsilon"]["pld"])

    return tweak


def test_an_overstated_epsilon_passes_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "run", rounds=3, tweak=scale_pld(1.05))
    report = verify_ledger(run, KEY.public_key())
    assert report.ok, report.problems
    assert any(
        "3 entries claim a PLD epsilon above" in note and "conservative" in note for note in report.notes
    )
    assert audit_cli.main(["verify", str(run), "--public-key", str(run / "ledger_public_key.pem")]) == 0
    assert "note: 3 entries claim a PLD epsilon above" in capsys.readouterr().out


@pytest.mark.parametrize(("factor", "ok"), [(0.997, False), (0.9995, True), (1.0005, True), (1.5, True)])
def test_only_an_understated_epsilon_beyond_the_tolerance_fails(
    tmp_path: Path, factor: float, ok: bool
) -> None:
    report = verify_ledger(write_run(tmp_path / "run", rounds=2, tweak=scale_pld(factor)), KEY.public_key())
    assert report.ok is ok, report.problems
    if not ok:
        assert all("(understated)" in p for p in report.problems) and len(report.problems) == 2


# --- local mode -----------------------------------------------------------------------------------------


def test_a_genuine_local_mode_ledger_verifies(tmp_path: Path) -> None:
    report = verify_ledger(write_run(tmp_path / "run", rounds=3, mode="local"), KEY.public_key())
    assert report.ok, report.problems
    assert report.local_dp is not None and report.local_dp["every_round"]["rounds"] == 3


def as_schema_1_without_local_z(r: int, fields: dict[str, Any]) -> None:
    for name in ("schema", "local_noise_multiplier"):
        fields.pop(name)


@pytest.mark.parametrize(
    ("tweak", "says"),
    [
        (as_schema_1_without_local_z, "must record local_noise_multiplier"),
        (lambda r, f: f.update(local_noise_multiplier=f["noise_multiplier"] / 2), "!= the accounted"),
        (lambda r, f: f.update(noise_std=0.5), "adds no noise at the server"),
        (lambda r, f: f.update(update_noise_multiplier=1.0), "update_noise_multiplier is 1.0"),
    ],
)
def test_local_mode_entries_that_do_not_describe_local_dp_fail(
    tmp_path: Path, tweak: Tweak, says: str
) -> None:
    report = verify_ledger(write_run(tmp_path / "run", rounds=2, mode="local", tweak=tweak), KEY.public_key())
    assert not report.ok and len(report.problems) == 2 and all(says in p for p in report.problems)


def analytic_gaussian_epsilon(z: float, sensitivity: float, delta: float) -> float:
    """The exact epsilon of one Gaussian mechanism (Balle & Wang 2018), independent of dp_accounting."""
    mu = sensitivity / z
    return float(
        brentq(
            lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 500
        )
    )


def test_one_local_report_costs_what_issue_16_measured() -> None:
    epsilon = report_epsilon(DEMO_Z, delta=DEMO_DELTA)
    assert epsilon["add_remove"] == pytest.approx(7.02, abs=0.005)
    assert epsilon["replace_one"] == pytest.approx(17.29, abs=0.005)
    for z in (DEMO_Z, 0.59, 1.3):
        exact = report_epsilon(z, delta=DEMO_DELTA)
        assert exact["add_remove"] == pytest.approx(analytic_gaussian_epsilon(z, 1, DEMO_DELTA), rel=1e-3)
        assert exact["replace_one"] == pytest.approx(analytic_gaussian_epsilon(z, 2, DEMO_DELTA), rel=1e-3)
    assert report_epsilon(0.0, delta=DEMO_DELTA) == {"add_remove": math.inf, "replace_one": math.inf}


def test_the_report_states_each_local_reports_epsilon(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=3, z=DEMO_Z, mode="local", delta=DEMO_DELTA)
    report = build_report(run, KEY.public_key())
    assert report["verification"]["ok"], report["verification"]["problems"]
    local = report["guarantee"]["local_dp"]
    (row,) = local["reports"]
    assert row["noise_multiplier"] == DEMO_Z and row["rounds"] == 3
    assert row["epsilon_add_remove"] == pytest.approx(7.02, abs=0.005)
    assert row["epsilon_replace_one"] == pytest.approx(17.29, abs=0.005)
    all_three = analytic_gaussian_epsilon(DEMO_Z / math.sqrt(3), 1, DEMO_DELTA)
    assert local["every_round"]["epsilon_add_remove"] == pytest.approx(all_three, rel=1e-3)
    assert "without amplification by sampling" in local["statement"] and "7.02" in local["statement"]
    assert "Local DP, each report on its own" in render_html(report)
    central = build_report(write_run(tmp_path / "central", rounds=2), KEY.public_key())
    assert central["guarantee"]["local_dp"] is None


# --- an unpinned head -----------------------------------------------------------------------------------


def test_verify_without_an_expected_head_says_a_cut_end_goes_unseen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path / "run", rounds=3)
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    report = verify_ledger(run, KEY.public_key())
    assert report.ok and TRUNCATION_NOTE in report.notes and not report.head_pinned
    (run / "ledger.jsonl").write_bytes(b"".join(lines[:-1]))  # cut the last entry off
    key = str(run / "ledger_public_key.pem")
    assert audit_cli.main(["verify", str(run), "--public-key", key]) == 0  # passes, but says why it could
    out = capsys.readouterr().out
    assert "OK" in out and "note: no expected head hash was given" in out and "cannot be detected" in out
    pinned = verify_ledger(run, KEY.public_key(), expected_head=report.head_hash)
    assert not pinned.ok and TRUNCATION_NOTE not in pinned.notes and pinned.head_pinned


def test_the_report_warns_when_nothing_pins_the_head(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=2)
    report = build_report(run, KEY.public_key())
    assert TRUNCATION_NOTE in report["verification"]["notes"]
    assert "entries cut off the end" in render_html(report) and "id='notes'" in render_html(report)
    head = report["verification"]["head_hash"]
    pinned = build_report(run, KEY.public_key(), expected_head=head)
    assert TRUNCATION_NOTE not in pinned["verification"]["notes"] and pinned["verification"]["head_pinned"]
