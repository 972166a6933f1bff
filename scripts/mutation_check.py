"""Mutation check of the privacy mechanism: each mutant breaks one part of it on purpose, in a scratch copy of
the repository, and runs the tests that must catch it. A mutant is killed when those tests fail, survives
when they pass. First the tests run on the unmutated copy and must pass (a broken copy would "kill" every
mutant). Prints one line per mutant and `N killed, M survived`; exits 1 when any survives (or when a mutant
no longer applies: the code it targets moved, so the check itself needs updating).

    bash scripts/mutation_check.sh              # every mutant (a few minutes on 2 cores)
    bash scripts/mutation_check.sh noise-x0     # only the named ones

The scratch copy holds the repository's tracked files as they are in the working tree (so commit new files
first); the tests run with PYTHONPATH pointing at it (Ray's workers inherit it), so the installed
(editable) package is not what they import.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]  # fast ones first: pytest stops at the first failure
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) replacements in the same file


AGGREGATOR = "server/strategy/aggregator.py"
MECHANISM = "shared/privacy/mechanism.py"
ADD_NOISE = "                total = total + self._noise.sample(total.shape, std=std)\n"
SCALES = (
    "        scale = torch.where(finite, self.row_scales(norms), torch.zeros_like(norms)).float()  # (B,)\n"
)
UNSCALED = SCALES.replace("self.row_scales(norms)", "torch.ones_like(norms)")
SUMMED = "        total = torch.cat([s.reshape(-1) for s in sums]).double() * factor  # (P,)\n"
CLIP_TOTAL = "        total = total * min(1.0, self.clip_norm / max(float(total.norm()), 1e-30))\n"
CLIP_TESTS = ("tests/shared/privacy/test_privacy_clipping.py", "tests/client/test_local_train.py")
COORDINATOR_TESTS = (
    "tests/server/test_coordinator_applied.py",
    "tests/simulation/test_mechanism_statistics.py",
)

MUTANTS = (
    Mutant(
        "clear-noise-in-sum",
        "the coordinator says the clear sum is already noised (z C): no noise is drawn",
        "server/rounds/coordinator.py",
        "            noise_in_sum=collected.noise_in_sum,\n",
        "            noise_in_sum=self.plan.noise_multiplier * self.aggregator.clip_norm,\n",
        COORDINATOR_TESTS,
    ),
    Mutant(
        "coordinator-fixed-cohort",
        "Coordinator.sample draws a fixed-size cohort (still labelled Poisson)",
        "server/rounds/coordinator.py",
        "        return poisson_cohort(self.population.n_users, "
        "sample_rate=self.plan.sample_rate, rng=rng)\n",
        "        n = self.population.n_users\n"
        "        users = np.sort(rng.choice(n, size=round(self.plan.sample_rate * n), replace=False))\n"
        "        q = self.plan.sample_rate\n"
        "        return CohortSample(users.astype(np.int64), 'poisson', q, n)\n",
        COORDINATOR_TESTS,
    ),
    Mutant(
        "noise-x0",
        "the server's noise is multiplied by 0",
        AGGREGATOR,
        ADD_NOISE,
        ADD_NOISE.replace("+ self._noise", "+ 0 * self._noise"),
        ("tests/server/test_strategy_aggregator.py",),
    ),
    Mutant(
        "noise-std-halved",
        "the server's noise std is halved",
        AGGREGATOR,
        "            std = self._z_update * clip_norm\n",
        "            std = self._z_update * clip_norm / 2\n",
        ("tests/server/test_strategy_aggregator.py",),
    ),
    Mutant(
        "poisson-sample-fixed",
        "poisson_sample returns a fixed-size cohort",
        "server/strategy/poisson_sampling.py",
        "    chosen = rng.random(int(population)) < sample_rate  # one independent coin per user\n",
        "    chosen = np.arange(int(population)) < round(sample_rate * int(population))\n",
        ("tests/server/test_strategy.py",),
    ),
    Mutant(
        "realised-divisor",
        "the noised sum is divided by the realised count instead of q N",
        AGGREGATOR,
        "        divisor = self.expected_cohort\n",
        "        divisor = float(max(count, 1))\n",
        ("tests/server/test_strategy_aggregator.py",),
    ),
    Mutant(
        "shard-no-clipping",
        "a shard sums its users' updates without clipping them",
        MECHANISM,
        SCALES,
        UNSCALED,
        CLIP_TESTS,
    ),
    Mutant(
        "clip-after-sum",
        "the shard clips the SUM of its users' updates instead of each user's",
        MECHANISM,
        SCALES,
        UNSCALED,
        CLIP_TESTS,
        also=((SUMMED, SUMMED + CLIP_TOTAL),),
    ),
    Mutant(
        "secagg-node-noise-off",
        "secure aggregation: the nodes add no noise share",
        "client/masked_update.py",
        "std=per_user_std * float(np.sqrt(result.count)))",
        "std=0.0)",
        ("tests/server/test_secure_aggregation.py",),
    ),
    Mutant(
        "secagg-top-up-off",
        "secure aggregation: the server adds no top-up for dropped users",
        "server/secagg/secure_round.py",
        "        words = words + noise.discrete(words.size, std=std).view(np.uint64)\n",
        "        words = words + noise.discrete(words.size, std=0.0).view(np.uint64)\n",
        ("tests/server/test_secure_aggregation.py",),
    ),
    Mutant(
        "local-noise-off",
        "local DP: the devices add no noise",
        MECHANISM,
        "        return noise.sample(shape, std=noise_multiplier * self.clip_norm * math.sqrt(users))\n",
        "        return noise.sample(shape, std=0.0)\n",
        CLIP_TESTS,
    ),
    Mutant(
        "trending-noise-off",
        "DP trending counts are released without noise",
        "server/trending/trending_query.py",
        "    noisy = total + noise.sample(total.shape, std=std)\n",
        "    noisy = total + 0 * noise.sample(total.shape, std=std)\n",
        ("tests/server/test_trending_mechanism.py",),
    ),
    Mutant(
        "start-check-noise-off",
        "the start check's sum of gains is released without noise",
        "server/rounds/start_check.py",
        "    return NoisedGain(float(total + noise.normal(std=std)), std)\n",
        "    return NoisedGain(float(total + 0 * noise.normal(std=std)), std)\n",
        ("tests/server/test_start_check_mechanism.py",),
    ),
    Mutant(
        "start-check-unclamped",
        "a node sums its users' start-check gains without clamping them to [-1, 1] (sensitivity unbounded)",
        "client/federated_evaluation.py",
        "    return float(np.clip(trained_ndcg - start_ndcg, -1.0, 1.0).sum())\n",
        "    return float((trained_ndcg - start_ndcg).sum())\n",
        ("tests/client/test_start_gain.py",),
    ),
    Mutant(
        "start-check-uncalibrated",
        "the calibration of the training z leaves the start check out of the budget",
        "shared/privacy/planned_noise.py",
        "    check = (start_check_event(config),) if config.runs_start_check else ()\n",
        "    check = ()\n",
        ("tests/shared/privacy/test_planned_noise.py",),
    ),
    Mutant(
        "discrete-laplace",
        "the discrete Gaussian sampler returns its discrete Laplace proposals",
        "shared/privacy/noise.py",
        "            accept = self._generator.random(todo.size) < np.exp(\n",
        "            accept = self._generator.random(todo.size) < 1 + 0 * np.exp(\n",
        ("tests/shared/privacy/test_privacy_noise.py",),
    ),
    Mutant(
        "noise-reused",
        "the server draws each round but adds the first round's draw again",
        AGGREGATOR,
        ADD_NOISE,
        "                drawn = self._noise.sample(total.shape, std=std)\n"
        "                self._first = getattr(self, '_first', drawn)\n"
        "                total = total + self._first\n",
        ("tests/server/test_strategy_aggregator.py",),
    ),
)


def scratch_copy(into: Path) -> None:
    """The repository's tracked files (as they are in the working tree) under `into`."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in listed.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)


def apply(mutant: Mutant, tree: Path) -> bool:
    """Apply the mutant in `tree`; False when a text it replaces is not there exactly once."""
    path = tree / mutant.file
    text = path.read_text()
    for old, new in ((mutant.old, mutant.new), *mutant.also):
        if text.count(old) != 1:
            return False
        text = text.replace(old, new)
    path.write_text(text)
    return True


def pytest(tree: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int | None, float]:
    """pytest's exit code on `tests` in `tree` (None: timed out) and the seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(tree), "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start
    return done.returncode, time.perf_counter() - start


def run(mutant: Mutant, base: Path, timeout_s: float) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as folder:
        tree = Path(folder)
        shutil.copytree(base, tree, dirs_exist_ok=True)
        if not apply(mutant, tree):
            return "NOT APPLIED", 0.0
        code, seconds = pytest(tree, mutant.tests, timeout_s)
        outcomes = {None: "killed (timeout)", 0: "SURVIVED", 1: "killed"}  # 1: tests failed
        return outcomes.get(code, f"ERROR (pytest exit {code})"), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per mutant")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; known: {[m.name for m in MUTANTS]}")
    killed = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation-base-") as base:
        scratch_copy(Path(base))
        tests = tuple(dict.fromkeys(test for m in chosen for test in m.tests))
        code, seconds = pytest(Path(base), tests, args.timeout_s * 2)
        print(f"{'baseline':>16}  the tests pass on the unmutated copy: {code == 0} ({seconds:.0f} s)")
        if code != 0:
            print("the tests must pass before any mutant can be judged (uncommitted new files?)")
            return 2
        for mutant in chosen:
            outcome, seconds = run(mutant, Path(base), args.timeout_s)
            killed += outcome.startswith("killed")
            print(f"{outcome:>16}  {mutant.name:<26} {seconds:6.1f} s  {mutant.what}", flush=True)
    survived = len(chosen) - killed
    print(f"{killed} killed, {survived} survived ({time.perf_counter() - start:.0f} s)")
    return 0 if survived == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
