"""The privacy report as one self-contained HTML page (plots inlined as PNG), rendered from `build_report`."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
body{line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
.ok{color:#12691b;font-weight:bold} .bad{color:#a40000;font-weight:bold} img{max-width:100%}
dt{font-weight:bold;margin-top:.5em} code{background:#f4f4f4;padding:0 .2em}
"""


def render_html(report: dict[str, Any], *, header: str = "") -> str:
    """The whole page for a report dict (`header`: trusted HTML put first in the body, e.g. navigation)."""
    v, g = report["verification"], report["guarantee"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>fedhome privacy report {escape(str(report['run_id']))}</title>",
        f"<style>{STYLE}</style></head><body>",
        header,
        f"<h1>Privacy report: run <code>{escape(str(report['run_id']))}</code></h1>",
        _headline(g),
        _verdict(v),
        "<h2>The guarantee</h2>",
        _guarantee(g),
        "<h2>Accountants</h2>",
        _table(
            ["accountant", "library", "assumptions"],
            [[a["name"], a["library"], a["assumptions"]] for a in report["accountants"]],
        ),
        "<h2>Does what ran match what the accountants assume?</h2>",
        _list(report["mismatches"])
        if report["mismatches"]
        else "<p class='ok' id='mismatches'>No mismatch found.</p>",
        "<h2>What the guarantee does not cover</h2>",
        _list(report["not_covered"]),
        "<h2>Empirical audit</h2>",
        _canary(report["empirical_audit"]),
        "<h2>Release</h2>",
        _release(report["release"]),
        "<h2>Plots</h2>",
        _plots(report),
        "<h2>Every round</h2>",
        _rounds(report),
        "<h2>Trending releases</h2>",
        _trending(report.get("trending", [])),
        "<h2>Start check: did training beat its start?</h2>",
        _start_check(report.get("start_check", [])),
        f"<p><small>fedhome-audit {escape(report['tools']['fedhome-audit'])}, dp-accounting "
        f"{escape(report['tools']['dp-accounting'])}; report format {report['report_version']}.</small></p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _verdict(v: dict[str, Any]) -> str:
    status = (
        "<p class='ok' id='verdict'>VERIFIED: every signature, link, round and epsilon checks out.</p>"
        if v["ok"]
        else f"<p class='bad' id='verdict'>FAILED: {len(v['problems'])} problem(s).</p>"
        + _list(v["problems"][:50])
    )
    facts = [
        ("ledger entries", v["entries"]),
        ("signing key id", v["key_id"]),
        ("ledger head hash", v["head_hash"]),
        ("epsilon claimed by the ledger's last entry (training server, PLD)", _fmt(v["claimed_epsilon"])),
        (
            "headline epsilon recomputed by this auditor (PLD) / RDP cross-check (looser, not the guarantee)",
            f"{_fmt(v['recomputed_epsilon'])} / {_fmt(v['recomputed_rdp_epsilon'])}",
        ),
        (
            "budget the run's rounds record (the whole run's epsilon) / rounds planned",
            f"{_fmt(v.get('target_epsilon'))} / {_fmt(v.get('planned_rounds'))}",
        ),
    ]
    notes = v.get("notes", [])
    warnings = f"<div id='notes'><p><b>Notes</b> (these pass, but must be said):</p>{_list(notes)}</div>"
    return (
        status + (warnings if notes else "") + _table(["", ""], [[k, val] for k, val in facts]) + _cohorts(v)
    )


def _cohorts(v: dict[str, Any]) -> str:
    """verify's dispersion test of the realised cohorts, one row per (q, N) (server/audit/cohorts.py)."""
    rows = v.get("cohort_dispersion", [])
    if not rows:
        return ""
    head = ["q", "N", "rounds", "q*N", "mean cohort", "variance (binomial)", "P(this small)", "P(this large)"]
    body = [
        [
            _fmt(r["sample_rate"]),
            r["population"],
            r["rounds"],
            _fmt(r["expected_cohort"]),
            _fmt(r["mean_cohort"]),
            f"{_fmt(r['sample_variance'])} ({_fmt(r['binomial_variance'])})",
            _fmt(r["p_too_small"]),
            _fmt(r["p_too_large"]),
            r["verdict"],
        ]
        for r in rows
    ]
    return (
        "<p id='cohort-dispersion'>Realised cohorts against Binomial(N, q) (Chernoff bounds on each tail; "
        "a group fails below 1e-6):</p>" + _table([*head, "verdict"], body)
    )


def _headline(g: dict[str, Any]) -> str:
    """The one epsilon the page leads with; every other epsilon on the page is labelled as what it is."""
    head = g.get("headline_epsilon")
    if not head:
        return ""
    delta = "n/a" if head["delta"] is None else f"{head['delta']:.3g}"
    return (
        f"<p id='headline-epsilon'><b>Headline: epsilon {escape(_fmt(head['epsilon']))} at delta "
        f"{delta}</b>, the {escape(head['label'])}.</p>"
    )


def _other_epsilons(g: dict[str, Any]) -> str:
    rows = [[e["label"], _fmt(e["epsilon"])] for e in g.get("other_epsilons", [])]
    if not rows:
        return ""
    return "<div id='other-epsilons'><p>Every other epsilon, labelled (none of them is the headline):</p>" + (
        _table(["what it is", "epsilon"], rows) + "</div>"
    )


def _guarantee(g: dict[str, Any]) -> str:
    eps = g["epsilon"]
    items = [
        ("Unit of privacy", g["unit_of_privacy"]),
        ("Neighbouring datasets", g["neighbouring_relation"]),
        ("Setting", "; ".join(g["setting"])),
        ("Secure aggregation", g["secure_aggregation"]),
        ("What is released", g["released"]),
        (
            "Headline (epsilon, delta): user-level, everything released",
            f"({_fmt(eps['recomputed_pld'])}, {g['delta']:.3g}) after {g['rounds']} rounds and "
            f"{g.get('trending_releases', 0)} trending release(s)"
            + (f" and {g['start_checks']} start check(s)" if g.get("start_checks") else "")
            if g["delta"] is not None
            else "unknown (the ledger could not be read)",
        ),
        ("Why this delta", g["delta_reason"]),
        ("delta times N", _fmt(g.get("delta_times_n"))),
    ]
    cap = g.get("participation_cap")
    if cap:
        bounds = (
            f"user-level Poisson-sampling bound {_fmt(cap['poisson_bound_pld'])}, user-level cap bound "
            f"{_fmt(cap['cap_bound_pld'])}"
        )
        items.append(("Participation cap", f"k = {cap['cap']}: {bounds}. {cap['statement']}"))
    if g.get("local_dp"):
        items.append(("Local DP, each report on its own", g["local_dp"]["statement"]))
    if g["record_level"]:
        r = g["record_level"]
        items.append(
            (
                "Record-level DP-SGD",
                f"record-level epsilon (per training example, not per user) {_fmt(r['epsilon'])} at delta "
                f"{r['delta']} ({r['note']})",
            )
        )
    body = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(val))}</dd>" for k, val in items)
    return f"<dl id='guarantee'>{body}</dl>" + _other_epsilons(g)


def _canary(audit: dict[str, Any] | None) -> str:
    if audit is None:
        return "<p>No canary audit in this run folder (run <code>fedhome-sim canary</code> to make one).</p>"
    rows = [
        [
            name,
            _fmt(audit[key]["epsilon_estimate"]),
            _fmt(audit[key]["threshold_lower_bound"]),
            _fmt(audit[key]["one_run_lower_bound"]),
        ]
        for name, key in (("final model", "final_model"), ("all rounds", "all_rounds"))
    ]
    verdict = (
        "ok'>no lower bound exceeds the analytic epsilon"
        if audit["ok"]
        else "bad'>" + "; ".join(audit["problems"])
    )
    return (
        f"<p>{escape(audit['source'])}. {audit['inserted']} of {audit['canaries']} canaries inserted, "
        f"{audit['rounds']} rounds, breakage: {escape(audit['breakage'])}. Analytic epsilon "
        f"<b>{_fmt(audit['analytic_epsilon'])}</b> at delta {audit['delta']:.3g}.</p>"
        + _table(
            [
                "statistic",
                "estimate (Andrew et al.)",
                "heuristic bound (threshold, Clopper-Pearson; not the verdict's)",
                "lower bound (one run, Steinke et al.; the verdict's)",
            ],
            rows,
        )
        + f"<p id='canary-verdict' class='{verdict}</p>"
    )


def _release(release: dict[str, Any]) -> str:
    if release.get("manifest") is None and "ok" not in release:
        return f"<p>{escape(release['note'])}</p>"
    if not release["ok"]:
        return f"<p class='bad' id='release-verdict'>RELEASE FAILED</p>{_list(release['problems'])}"
    manifest = release["manifest"]
    privacy = manifest["privacy"]
    return (
        f"<p class='ok' id='release-verdict'>Release {manifest['version']} verifies and is bound to ledger "
        f"entry {release['bound_round']}: the release's model epsilon at its round (not the headline) "
        f"{_fmt(privacy['epsilon'])} "
        f"at delta {privacy['delta']:.3g}, "
        f"model {escape(str(manifest['model']['sha256'])[:16])}&hellip;</p>"
    )


def _rounds(report: dict[str, Any]) -> str:
    results = {r["round"]: r for r in report["verification"]["entry_results"]}
    head = ["round", "verified", "q", "N", "q*N", "cohort", "C", "z", "noise std"]
    head += ["user eps so far, claimed (PLD)", "user eps so far, claimed (RDP cross-check)"]
    secure = any("secure_aggregation" in r for r in report["rounds"])
    if secure:
        head.append("secure aggregation")
    rows = []
    for r in report["rounds"]:
        result = results.get(r["round"], {"ok": False, "problems": ["not readable"]})
        status = "ok" if result["ok"] else "; ".join(result["problems"])
        rows.append(
            [
                r["round"],
                status,
                r["sample_rate"],
                r["population"],
                _fmt(r["expected_cohort"]),
                r["realised_cohort"],
                r["clip_norm"],
                _fmt(r["noise_multiplier"]),
                _fmt(r["noise_std"]),
                _fmt(r["epsilon_pld"]),
                _fmt(r["epsilon_rdp"]),
                *([_secure_cell(r.get("secure_aggregation"))] if secure else []),
            ]
        )
    return f"<details><summary>{len(rows)} rounds</summary>{_table(head, rows)}</details>"


def _secure_cell(secure: Any) -> str:
    """'summed m of n nodes, d dropped' (or why nothing was summed) for a securely aggregated round."""
    if not isinstance(secure, dict):
        return "not used"
    if secure.get("failed"):
        return f"nothing summed: {secure['failed']}"
    summed = f"summed {secure.get('masked_inputs')} of {secure.get('participants')} nodes"
    return f"{summed}, {secure.get('dropped')} dropped, C' = {secure.get('sensitivity')}"


def _trending(rows: list[dict[str, Any]]) -> str:
    """DP trending counts released during the run: each one a Poisson-subsampled Gaussian (sensitivity 1),
    composed into the epsilon above."""
    if not rows:
        return "<p id='trending'>No trending counts were released.</p>"
    head = ["after round", "purpose", "q", "z", "noise std", "k", "window (days)", "window end (source)"]
    head += ["cohort", "counts file"]
    table = [
        [
            r["after_round"],
            r.get("purpose") or "trending",
            r["sample_rate"],
            _fmt(r["noise_multiplier"]),
            _fmt(r["noise_std"]),
            r["max_items"],
            r["window_days"],
            f"{r.get('as_of_s')} ({r.get('as_of_source') or 'not recorded'})",
            r["realised_cohort"],
            {True: "matches", False: "DOES NOT MATCH", None: "not present"}[r["counts_file_ok"]],
        ]
        for r in rows
    ]
    return f"<div id='trending'>{_table(head, table)}</div>"


def _start_check(rows: list[dict[str, Any]]) -> str:
    """The start check after the last round: a Poisson-subsampled Gaussian sum of per-user NDCG@10 gains
    (sensitivity 1), composed into the epsilon above, and the model it chose."""
    if not rows:
        return "<p id='start-check'>No start check was made (the trained model ships unchecked).</p>"
    head = ["after round", "q", "z", "noise std", "noised gain sum", "margin", "decision", "shipped model"]
    head += ["user eps after it (auditor)", "its epsilon cost"]
    table = [
        [
            r["after_round"],
            r["sample_rate"],
            _fmt(r["noise_multiplier"]),
            _fmt(r["noise_std"]),
            _fmt(r["noised_gain_sum"]),
            _fmt(r["margin"]),
            "ship the trained model" if r["decision"] == "trained" else "ship the START (training lost)",
            f"{str(r['model_sha256_shipped'])[:16]}...",
            _fmt(r.get("epsilon_after")),
            _fmt(r.get("epsilon_cost")),
        ]
        for r in rows
    ]
    return f"<div id='start-check'>{_table(head, table)}</div>"


def _plots(report: dict[str, Any]) -> str:
    rounds = report["rounds"]
    if not rounds:
        return "<p>No rounds to plot.</p>"
    x = [r["round"] for r in rounds]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    by_round = report["verification"]["epsilon_by_round"]
    for label, values, xs in (
        ("claimed PLD", [_num(r["epsilon_pld"]) for r in rounds], x),
        ("claimed RDP (Opacus)", [_num(r["epsilon_rdp"]) for r in rounds], x),
        (
            "recomputed PLD (auditor)",
            [_num(e["recomputed_pld"]) for e in by_round],
            [e["round"] for e in by_round],
        ),
    ):
        axes[0].plot(xs, values, label=label)
    axes[0].set(title="user-level epsilon, model rounds (headline adds trending)", xlabel="round")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [_num(r["realised_cohort"]) for r in rounds], ".", markersize=3, label="realised")
    axes[1].plot(x, [_num(r["expected_cohort"]) for r in rounds], label="q*N (divisor)")
    axes[1].set(title="cohort size", xlabel="round")
    axes[1].legend(fontsize=8)
    axes[2].plot(x, [_num(r["clip_norm"]) for r in rounds])
    axes[2].set(title="clip norm C", xlabel="round")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode()
    alt = "epsilon, cohort size and clip norm per round"
    return f"<img id='plots' alt='{alt}' src='data:image/png;base64,{data}'>"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    header = "".join(f"<th>{escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def _num(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("inf") if value == "inf" else float("nan")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)
