"""What `fedhome-sim federated` shows a person: rounded numbers in the summary, no NaN on the progress bar,
and no library chatter (Flower's DEBUG lines and deprecation notice, alembic, Ray's FutureWarning) without
`-v`."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from federated_toy import TINY

from server.rounds.coordinator import progress_postfix
from shared.data.split import Stage
from shared.run_folder import RunFolder
from simulation.evaluate import EvalResult, Metrics
from simulation.federated import FederatedResult, readable, write_federated_results
from simulation.sim_cli import configure_logging

EPSILON = 49.98917996412761


def eval_result(stage: Stage, ndcg: float) -> EvalResult:
    metrics = Metrics(n_users=18, hr_10=0.7222222222222222, ndcg_10=ndcg, recall_20=0.8, coverage_10=0.5)
    empty = np.zeros(0, dtype=np.int64)
    return EvalResult(stage, metrics, metrics, {}, 0, 0.01, empty, empty, np.zeros((0, 10), dtype=np.int64))


def test_the_summary_rounds_what_a_person_reads_and_the_json_keeps_it_all(tmp_path: Path) -> None:
    summary = {"rounds": 4, "mode": "central", "noise_multiplier": 0.20741, "user_epsilon": EPSILON,
               "delta": 0.0173, "stop_reason": "completed all rounds", "start_check": {}}  # fmt: skip
    result = FederatedResult(
        RunFolder(tmp_path),
        summary,
        eval_result("valid", 0.30890864612404856),
        eval_result("test", 0.3859),
        40.2,
    )
    text = write_federated_results(result, command="fedhome-sim federated")
    assert "| 49.99 |" in text and "| 0.3089 |" in text
    assert not re.search(r"\d\.\d{6,}", text), text  # no float printed unrounded
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["user_epsilon"] == EPSILON


def test_readable_numbers() -> None:
    assert readable(0.30890864612404856) == "0.3089"
    assert readable(EPSILON) == "49.99"
    assert readable(1.2345e-5) == "1.234e-05"
    assert readable("inf") == "inf" and readable(8) == "8"


def test_the_bar_shows_the_last_evaluated_ndcg_never_nan() -> None:
    row = {"round": 3, "user_epsilon": 41.0781, "cohort": 20}  # a round between evaluations
    assert progress_postfix(row, last_ndcg=None) == {"eps": "41.08", "cohort": "20"}
    assert progress_postfix(row, last_ndcg=0.30890864612404856) == {
        "eps": "41.08",
        "ndcg": "0.3089",
        "cohort": "20",
    }


@pytest.fixture
def logging_state() -> Iterator[None]:
    """Put back what configure_logging changes: the loggers it sets, the root logger, the warnings filters."""
    loggers = [logging.getLogger(name) for name in ("flwr", "alembic", "absl", "")]
    saved = [(logger, logger.level, logger.handlers[:], logger.filters[:]) for logger in loggers]
    try:
        with warnings.catch_warnings():
            yield
    finally:
        logging.captureWarnings(False)
        for logger, level, handlers, filters in saved:
            logger.setLevel(level)
            logger.handlers[:], logger.filters[:] = handlers, filters


def ray_future_warning_ignored() -> bool:
    return any(
        action == "ignore"
        and category is FutureWarning
        and module is not None
        and module.match("ray._private.worker")
        for action, _, category, module, _ in warnings.filters
    )


def deprecation_notice() -> logging.LogRecord:
    return logging.LogRecord(
        "flwr", logging.WARNING, "x.py", 1, "DEPRECATED FEATURE: %s", ("run_simulation",), None
    )


@pytest.mark.usefixtures("logging_state")
def test_without_verbose_library_chatter_is_quiet() -> None:
    configure_logging(verbose=False)
    flwr = logging.getLogger("flwr")
    assert flwr.getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("alembic.runtime.plugins").getEffectiveLevel() == logging.WARNING
    assert not any(type(h).__name__ == "ConsoleHandler" for h in flwr.handlers)  # each record once, via root
    assert not flwr.filter(deprecation_notice())
    assert flwr.filter(logging.LogRecord("flwr", logging.ERROR, "x.py", 1, "An exception occurred", (), None))
    assert ray_future_warning_ignored()


@pytest.mark.usefixtures("logging_state")
def test_verbose_shows_it() -> None:
    configure_logging(verbose=True)
    flwr = logging.getLogger("flwr")
    assert flwr.getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("alembic").level == logging.NOTSET  # the root's level: DEBUG in the CLI
    assert flwr.filter(deprecation_notice())
    assert not ray_future_warning_ignored()


@pytest.mark.integration
def test_a_tiny_federated_run_prints_no_chatter_and_no_nan(tmp_path: Path) -> None:
    settings = {**TINY, "encoder.cache_dir": str(tmp_path / "cache"), "federated.eval_every": "2"}
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "simulation.sim_cli", "federated", *overrides, "--rounds", "3",
               "--epsilon", "50", "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "| central |" in done.stdout
    for chatter in ("DEBUG", "alembic", "DEPRECATED", "FutureWarning"):
        assert chatter not in output, chatter
    assert not re.search(r"\bnan\b", output, flags=re.IGNORECASE)
    assert not re.search(r"\d\.\d{6,}", done.stdout), done.stdout  # the summary's numbers are rounded
