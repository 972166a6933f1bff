"""The one place for configuration: frozen, keyword-only dataclasses validated once when built.

Defaults live here; entry points override them from command-line flags (and, later, Flower's run config)
with `with_overrides`. Nothing else in fedhome reads environment variables or raw config dictionaries.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.errors import ConfigError

DataFormat = Literal["auto", "csv", "movielens", "amazon2014", "amazon-jsonl"]
EncoderBackend = Literal["auto", "torch", "onnx-int8"]
DeviceName = Literal["auto", "cpu", "cuda"]
LossName = Literal["full", "sampled"]
RepeatTargets = Literal["exclude", "keep"]
ScorePrecision = Literal["auto", "float32", "bfloat16"]
PrivacyMode = Literal["central", "local", "none"]
ServerOptimizerName = Literal["sgd", "momentum", "adam"]
DevicesPerNode = Literal["shard", "one"]
LearningRateSchedule = Literal["constant", "cosine"]
StartCheckSetting = Literal["auto", "on", "off"]
PopularityReleaseSetting = Literal["auto", "on", "off"]


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def _fraction(name: str, value: float, *, upper_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1{')' if upper_open else ']'}, got {value}")


@dataclass(frozen=True, kw_only=True)
class SyntheticShopConfig:
    """Size and shape of the built-in synthetic shop."""

    n_users: int = 3_000
    n_items: int = 2_000
    n_categories: int = 12
    mean_sessions_per_user: float = 4.0
    new_item_fraction: float = 0.1  # items that arrive during the simulated period (the cold-start slice)
    promotion_fraction: float = 0.08
    start_time_s: int = 1_700_000_000
    duration_days: int = 180
    seed: int = 7

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_categories", "mean_sessions_per_user", "duration_days"):
            _positive(name, getattr(self, name))
        _fraction("new_item_fraction", self.new_item_fraction)
        _fraction("promotion_fraction", self.promotion_fraction)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which shop to use and how to split it."""

    dataset: str = "synthetic"  # "synthetic" or a folder/file path
    format: DataFormat = "auto"
    skip_bad_rows: bool = False  # skip and count malformed rows instead of failing on the first one
    cold_item_fraction: float = 0.1  # items held out of all training for the cold-start slice
    split_seed: int = 0
    synthetic: SyntheticShopConfig = field(default_factory=SyntheticShopConfig)

    def __post_init__(self) -> None:
        _fraction("cold_item_fraction", self.cold_item_fraction)


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """The catalogue's sentence encoder and its embedding cache."""

    model_name: str = "all-MiniLM-L6-v2"
    backend: EncoderBackend = "auto"  # auto: onnx-int8 on CPU, torch (half precision) on CUDA
    device: DeviceName = "auto"
    batch_size: int = 64
    with_description: bool = True  # embed "title | category | brand | description"
    cache_dir: Path = Path(".cache/fedhome/embeddings")
    threads: int = 0  # onnxruntime CPU threads for the int8 fast path; 0: onnxruntime's default

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The two-tower model. No per-item id parameters unless `item_id_residual` (for comparison only)."""

    dim: int = 64
    max_history: int = 20
    n_heads: int = 2
    n_layers: int = 1
    residual_rank: int = 64  # rank of the trainable correction on top of the frozen text vector
    dropout: float = 0.0  # 0.1 was no better on amazon_beauty and learned more slowly
    item_id_residual: bool = False
    item_bias: bool = True  # a learned per-item score offset computed from the item's text (no id)
    # A popularity prior: score += w * log(1 + n_i), n_i the number of users with item i among their
    # `popularity_items_per_user` most recent distinct items (counted from training rows centrally; a DP
    # count release in federated runs), w one learned scalar starting at `popularity_weight`
    popularity_prior: bool = True
    popularity_items_per_user: int = 3
    popularity_weight: float = 1.0
    init_temperature: float = 20.0

    def __post_init__(self) -> None:
        for name in (
            "dim", "max_history", "n_heads", "n_layers", "residual_rank", "init_temperature",
            "popularity_items_per_user",
        ):  # fmt: skip
            _positive(name, getattr(self, name))
        _fraction("dropout", self.dropout)
        if self.dim % self.n_heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Centralised training of the two-tower model (the upper bound for federated training)."""

    epochs: int = 6  # at most; amazon_beauty's validation NDCG still rises slowly after 6 (time budget)
    batch_size: int = 256
    learning_rate: float = 1e-3
    # the user tower's read-out (users.out_proj, zero at the start) learns at this fraction of the rate: at
    # the full rate its first steps move every user vector off the text-similarity start (docs/results.md)
    read_out_lr_scale: float = 1.0
    weight_decay: float = 0.0
    # "sampled" (logQ-corrected, shared negatives) matched "full" on amazon_beauty at ~60% of the time
    loss: LossName = "sampled"
    n_negatives: int = 2048  # sampled-softmax negatives per batch
    negative_alpha: float = 0.75  # negatives drawn from q ~ (target count + 1)^alpha
    seed: int = 0
    # torch intra-op threads (0: torch's default, one per core). 1 by default: on the shared 2-core machines
    # a training step took 70 ms with 1 thread and 1,361 ms with 2 while other jobs ran (threads wait)
    threads: int = 1
    patience: int = 2  # stop after this many epochs without a better validation NDCG@10
    # precision of the (batch x catalogue) product with the frozen text in full-softmax training; "auto":
    # bfloat16 when the CPU multiplies bfloat16 natively (AMX / AVX512-BF16), else float32
    score_precision: ScorePrecision = "auto"
    refit: bool = True  # then retrain on train + validation rows for the best epoch count

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "learning_rate", "read_out_lr_scale", "n_negatives", "patience"):
            _positive(name, getattr(self, name))
        if self.weight_decay < 0 or self.threads < 0 or self.negative_alpha < 0:
            raise ConfigError("weight_decay, threads and negative_alpha must be >= 0")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """The evaluation harness: full ranking, leave-one-out."""

    batch_size: int = 1024
    activity_buckets: tuple[int, ...] = (5, 10, 20)  # upper bounds of training-length buckets; last is open
    # A target the user already had earlier in their history cannot be recommended (earlier items are removed
    # from the candidates): "exclude" leaves such users out of the stage (counted), "keep" ranks the target
    # as the one history item left in the candidates, which flatters any model that favours recent items.
    repeat_targets: RepeatTargets = "exclude"

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        if list(self.activity_buckets) != sorted(set(self.activity_buckets)):
            raise ConfigError("activity_buckets must be strictly increasing")


@dataclass(frozen=True, kw_only=True)
class MFConfig:
    """Matrix factorisation hyperparameters, chosen on amazon_beauty validation NDCG@10 (10% cold items).

    Small sweep, best epoch in brackets: lr 5e-3 with weight decay 0.01 -> 0.0287 (6), 0.3 -> 0.0332 (8, still
    rising), 1.0 -> 0.0301 (9); lr 1e-2 with weight decay 0.3 -> 0.0362 (10; 0.0358 already at 6).
    """

    dim: int = 64
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 1e-2
    weight_decay: float = 0.3  # decoupled (AdamW): each step shrinks every weight by lr * weight_decay
    init_std: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.dim, self.epochs, self.batch_size) < 1 or self.learning_rate <= 0 or self.init_std <= 0:
            raise ConfigError("mf: dim, epochs, batch_size, learning_rate, init_std must be positive")
        if self.weight_decay < 0:
            raise ConfigError("mf: weight_decay must be >= 0")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """User-level differential privacy of federated training (the unit of privacy is one user).

    mode "central": each sampled device clips its update to `clip_norm`, the server adds Gaussian noise of
    std noise_multiplier * clip_norm to the SUM and divides by the expected cohort size sample_rate * N.
    "local": each device adds that noise to its own clipped update before sending it (for comparison).
    "none": clipping only, no noise (epsilon is infinite; the ledger says so).
    """

    mode: PrivacyMode = "central"
    target_epsilon: float = 8.0  # user-level budget; a round that would exceed it is not started
    delta: float = 0.0  # 0: N ** -1.1 for a population of N users
    noise_multiplier: float = 0.0  # z; 0: calibrated from target_epsilon, delta, sample rate and rounds
    clip_norm: float = 1.0  # C, the L2 bound of each user's update over all trainable parameters
    adaptive_clipping: bool = False  # Andrew et al. 2021: move C toward the target unclipped quantile
    target_unclipped_quantile: float = 0.5
    clip_learning_rate: float = 0.2  # eta_C of the geometric update C <- C * exp(-eta_C (b - gamma))
    clip_count_stddev: float = 0.0  # std of the noise on the unclipped count; 0: expected cohort / 20
    # Record-level DP-SGD on the device with Opacus (one device per node only): its own epsilon, reported
    # separately and labelled record-level
    record_level: bool = False
    record_noise_multiplier: float = 1.0
    record_max_grad_norm: float = 1.0
    record_delta: float = 1e-5
    # Participation cap k: each device contributes to at most k training rounds of a run and refuses to
    # train after that (0: no cap). Accounting then reports the smaller of the Poisson bound and the cap
    # bound (k rounds of the Gaussian mechanism without amplification): docs/federated.md
    participation_cap: int = 0
    # Secure aggregation (server/secagg/secure_round.py): the server learns only the sum of the round's node
    # replies, and in central mode the nodes add the noise, so it never sees an un-noised sum. Each node
    # masks with `secagg_neighbours` others (0: all); values travel as multiples of `secagg_step`.
    secure_aggregation: bool = False
    secagg_neighbours: int = 0
    secagg_step: float = 2.0**-24
    seed: int = (
        -1
    )  # >= 0: deterministic noise for tests and reproductions (the ledger says so); -1: OS entropy

    def __post_init__(self) -> None:
        for name in ("target_epsilon", "clip_norm", "clip_learning_rate", "record_max_grad_norm"):
            _positive(name, getattr(self, name))
        if self.noise_multiplier < 0 or self.clip_count_stddev < 0 or self.record_noise_multiplier < 0:
            raise ConfigError("noise_multiplier, clip_count_stddev and record_noise_multiplier must be >= 0")
        _fraction("delta", self.delta)
        _fraction("record_delta", self.record_delta)
        if self.participation_cap < 0:
            raise ConfigError(f"participation_cap must be >= 0 (0: none), got {self.participation_cap}")
        if not 0.0 < self.target_unclipped_quantile < 1.0:
            raise ConfigError("target_unclipped_quantile must be in (0, 1)")
        if self.secagg_neighbours < 0 or not 0.0 < self.secagg_step <= 2.0**-8:
            raise ConfigError("secagg_neighbours must be >= 0 (0: all) and secagg_step in (0, 2^-8]")
        if self.secure_aggregation and self.adaptive_clipping:
            raise ConfigError(
                "adaptive clipping needs each node's unclipped count noised at the server; it is not "
                "available with secure aggregation"
            )


@dataclass(frozen=True, kw_only=True)
class FederatedConfig:
    """Federated training: rounds, sampling, local training on the device, the server optimiser."""

    rounds: int = 500  # at most; fewer when the privacy budget runs out first
    sample_rate: float = 0.05  # q: each user takes part in a round independently with this probability
    local_steps: int = 1  # SGD steps on the device per round (1: the update is one scaled gradient)
    local_learning_rate: float = 1.0
    max_examples_per_user: int = 32  # most recent training prefixes a device uses per round
    # Devices also train on their validation row: the test-stage protocol of the central models' refit on
    # train + validation (rounds chosen on validation by an earlier run); validation is then not held out
    train_on_valid: bool = False
    n_negatives: int = 512  # sampled-softmax negatives, drawn uniformly (public) from a per-round seed
    # dotted parameter-name prefixes that federated training updates; "all" = every trainable parameter
    trainable: tuple[str, ...] = ("all",)
    # Per-parameter update scales "prefix=s" (a fixed, public reparametrisation theta = s * phi): devices
    # train and clip in phi, so a parameter group with s > 1 gets a larger share of the clipped update and
    # an s^2 larger step, one with s < 1 a smaller one. Privacy is unchanged (clipping and noise act on phi).
    # The user tower's read-out starts at zero and dominates the first updates: scaled by 1/30 (an effective
    # 30x smaller step under Adam) the model no longer drops below its text-similarity start (docs/results.md)
    update_scales: tuple[str, ...] = ("users.out_proj=0.0333",)
    # Server Adam with bias correction: on amazon_beauty FedAvg/FedAvgM and uncorrected FedAdam pushed the
    # model off its text-similarity start in the first rounds; lr and epsilon as tuned there (docs/results.md)
    server_optimizer: ServerOptimizerName = "adam"
    server_learning_rate: float = 3e-3
    server_momentum: float = 0.9
    server_beta2: float = 0.999  # Adam
    server_epsilon: float = 1e-4  # Adam's denominator floor: below the DP noise std per coordinate (~1e-3)
    server_bias_correction: bool = True  # Adam: Kingma & Ba's bias correction (Reddi et al. have none)
    # "cosine": the server learning rate falls from server_learning_rate to server_lr_final_fraction of it
    # along half a cosine over `rounds` (Loshchilov & Hutter's annealing without restarts)
    server_lr_schedule: LearningRateSchedule = "constant"
    server_lr_final_fraction: float = 0.1
    nodes: int = 2  # simulated Flower nodes
    devices_per_node: DevicesPerNode = "shard"  # a node hosts a shard of users, or exactly one user
    chunk_size: int = 64  # users per batched (vmap) computation on a shard node
    eval_every: int = 10  # rounds between validation evaluations of the global model (0: only at the end)
    seed: int = 0  # negatives and model initialisation (user sampling and noise: PrivacyConfig.seed)
    run_dir: Path = Path("runs/federated")  # config, metrics, ledger, checkpoints, final model
    # The server's Ed25519 ledger-signing key (a path, never the key): `fedhome-server keygen` writes one.
    # Empty: a fresh key for this run only, kept outside the run folder (its public half goes into it).
    signing_key: str = ""
    node_timeout_s: float = 600.0  # how long a round waits for the nodes' replies
    # how long the run waits, before anything else, for `nodes` SuperNodes to connect; fewer: a clear error
    connect_timeout_s: float = 60.0
    # Simulation: a folder in which each virtual device keeps its receipts (<dir>/device-<user index>/), as a
    # real device does in its own folder (node config "device-dir"); empty: in the node's state only
    receipts_dir: str = ""

    def __post_init__(self) -> None:
        for name in ("rounds", "local_steps", "local_learning_rate", "max_examples_per_user", "n_negatives"):
            _positive(name, getattr(self, name))
        for name in ("server_learning_rate", "nodes", "chunk_size", "node_timeout_s", "connect_timeout_s"):
            _positive(name, getattr(self, name))
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        _fraction("server_momentum", self.server_momentum)
        _fraction("server_beta2", self.server_beta2)
        _fraction("server_lr_final_fraction", self.server_lr_final_fraction)
        if not self.trainable:
            raise ConfigError("trainable must name at least one parameter prefix (or 'all')")
        for entry in self.update_scales:
            prefix, sep, value = entry.partition("=")
            try:
                ok = bool(sep and prefix) and float(value) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"update_scales entries look like 'users.out_proj=0.1', got {entry!r}")
        if self.eval_every < 0:
            raise ConfigError("eval_every must be >= 0")


@dataclass(frozen=True, kw_only=True)
class TrendingConfig:
    """Trending counts released under user-level DP, accounted with training
    (server/trending/trending_query.py).

    A trending round Poisson-samples users with rate `sample_rate` (1: everyone); each sampled device sends
    the distinct items of its own log in the `window_days` before `as_of_s`, at most `max_items` (the most
    recent), each weighted 1/sqrt(max_items), so each user's vector has L2 norm <= 1 (the sensitivity);
    nodes return only sums. The server adds N(0, noise_multiplier^2) to every item of the sum and publishes
    counts = noisy sum * sqrt(max_items) / sample_rate. The accountant records it as one
    RoundEvent(sample_rate, noise_multiplier), composed with the training rounds. Off unless `every_rounds`
    or `final` asks for it.
    """

    every_rounds: int = 0  # a trending release after every this many training rounds; 0: none
    final: bool = False  # a trending release after the last training round (or where the budget stopped it)
    sample_rate: float = 1.0  # q_t: 1 = every user takes part
    # z_t: std of the noise on each item's sum (the sensitivity is 1). z_t 2, k 3, 30 days on the default
    # synthetic shop: epsilon 1.64 alone, +0.27 on a 60-round epsilon-8 run, top-20 overlap 0.53
    # (python -m simulation.benchmarks.bench_trending, docs/results.md); a larger shop affords more noise
    noise_multiplier: float = 2.0
    max_items: int = 3  # k: most recent distinct items a user contributes
    window_days: float = 30.0  # the items of the last W days before as_of_s
    # end of the window, unix seconds; 0: the wall-clock time of the trending round (a deployment).
    # `fedhome-sim federated` replaces 0 with the simulated log's public end (simulation/federated.py)
    as_of_s: int = 0

    def __post_init__(self) -> None:
        if self.every_rounds < 0 or self.as_of_s < 0:
            raise ConfigError("trending: every_rounds and as_of_s must be >= 0")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"trending.sample_rate must be in (0, 1], got {self.sample_rate}")
        if not self.noise_multiplier > 0:
            raise ConfigError(f"trending.noise_multiplier must be positive, got {self.noise_multiplier}")
        _positive("trending.max_items", self.max_items)
        _positive("trending.window_days", self.window_days)

    @property
    def enabled(self) -> bool:
        return self.every_rounds > 0 or self.final

    def releases(self, rounds: int) -> int:
        """How many trending releases a run of `rounds` training rounds makes (the last round's periodic
        release and the final one are the same release)."""
        periodic = rounds // self.every_rounds if self.every_rounds else 0
        last_is_periodic = self.every_rounds > 0 and rounds % self.every_rounds == 0
        return periodic + int(self.final and not last_is_periodic)


@dataclass(frozen=True, kw_only=True)
class StartCheckConfig:
    """The start check (server/rounds/start_check.py): after the last training round, a DP-accounted federated
    evaluation decides whether the trained model beats its start (the initial parameters: text similarity,
    public); when it does not, the run ships the start instead, and says so.

    Users are Poisson-sampled with rate `sample_rate` (q_s); each sampled device with a held-out validation
    row contributes g_u = NDCG@10(trained) - NDCG@10(start), clamped to [-1, 1] (sensitivity 1); nodes return
    only sums; the server adds N(0, noise_multiplier^2) to the total and ships the trained model only when the
    noised sum exceeds `margin` noise stds. Accounted as one RoundEvent(q_s, z_s), composed with training and
    included in the calibration of the training z (shared/privacy/planned_noise.py).

    `enabled`: "auto" runs it wherever it can run honestly (privacy mode "central", and "none" where it adds
    no noise and costs nothing) and leaves it off, with a note in the run summary, where it cannot: privacy
    mode "local" or secure aggregation (the server would see each node's sum in the clear), or
    `federated.train_on_valid` (no held-out row is left). "on" asks for it and is a ConfigError where it
    cannot run; "off" never runs it (the trained model is shipped).
    """

    enabled: StartCheckSetting = "auto"
    sample_rate: float = 1.0  # q_s: 1 = every user with a validation row takes part
    # z_s: std of the noise on the sum of gains (sensitivity 1). At epsilon 1, 500 rounds, q 0.05 and 22,332
    # users it raises the training z from 4.175 to 4.462; at epsilon 8 from 0.9553 to 0.9562
    noise_multiplier: float = 10.0
    margin: float = 0.0  # ship the trained model only when the noised sum > margin * noise std (>= 0)

    def __post_init__(self) -> None:
        if self.enabled not in ("auto", "on", "off"):
            raise ConfigError(f"start_check.enabled must be 'auto', 'on' or 'off', got {self.enabled!r}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"start_check.sample_rate must be in (0, 1], got {self.sample_rate}")
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"start_check.noise_multiplier must be positive, got {self.noise_multiplier}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ConfigError(f"start_check.margin must be >= 0 (in noise stds), got {self.margin}")


@dataclass(frozen=True, kw_only=True)
class PopularityReleaseConfig:
    """The DP count release a federated run's popularity prior comes from (`model.popularity_prior`;
    server/trending/popularity_release.py): one release before the first training round, by the trending
    mechanism (server/trending/trending_query.py) with k = `model.popularity_items_per_user`.

    Users are Poisson-sampled with rate `sample_rate` (q_p); each sampled device contributes 1/sqrt(k) on each
    of its k most recent distinct items among its TRAINING rows (held-out rows are never counted) in the
    `window_days` before the window end (`trending.as_of_s`, else the release's time; 0 days: the whole
    history before it), so its vector has L2 norm <= 1; nodes return only sums; the server adds
    N(0, noise_multiplier^2) to every item and publishes counts = noisy sum * sqrt(k) / q_p. The prior is
    log(1 + max(count, 0)). Accounted as one RoundEvent(q_p, z_p) before round 1, composed with training and
    included in the calibration of the training z (shared/privacy/planned_noise.py); no noise and no cost in
    privacy mode "none".

    `enabled`: "auto" makes the release when the model has the prior, the privacy mode is "central" with
    `privacy.target_epsilon >= min_epsilon`, or "none" (measured on amazon_beauty: below epsilon 4 the noise
    the release needs leaves the prior useless, and its budget does more for training). "auto" leaves it off,
    with a note in the run summary, in mode "local" and under secure aggregation (the release has no
    securely aggregated path here: node sums would reach the server in the clear). "on" asks for it whatever
    the epsilon and is a ConfigError where it cannot run; "off" never makes it (the prior stays zeros).

    Default "off" (measured, docs/results.md "Private learning on every shop"): a prior counted from the
    training rows once before round 1 is stale at test time. On amazon_beauty at epsilon 8 it raised held-out
    validation NDCG@10 (0.0454) but lowered test to 0.0393, against 0.0414 for the same model with a zero
    prior; the same model with counts refreshed over train + validation rows (what a release just before
    serving would count; probe, not accounted) gave 0.0439. A serving-time refresh release is not built yet.
    """

    enabled: PopularityReleaseSetting = "off"
    min_epsilon: float = 4.0  # "auto": central mode only at privacy.target_epsilon >= this
    # z_p: std of the noise on each item's sum (sensitivity 1). At k 3 the counts' noise std is z_p*sqrt(3)
    # ~ 3.5 users: on amazon_beauty valid text similarity 0.0389 -> 0.0430 with z_p 2 (0.0438 exact counts)
    noise_multiplier: float = 2.0
    sample_rate: float = 1.0  # q_p: 1 = every user takes part
    window_days: float = 0.0  # the items of the last W days before the window end; 0: the whole history

    def __post_init__(self) -> None:
        if self.enabled not in ("auto", "on", "off"):
            raise ConfigError(f"popularity.enabled must be 'auto', 'on' or 'off', got {self.enabled!r}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"popularity.sample_rate must be in (0, 1], got {self.sample_rate}")
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"popularity.noise_multiplier must be positive, got {self.noise_multiplier}")
        if not (self.min_epsilon >= 0 and math.isfinite(self.min_epsilon)):
            raise ConfigError(f"popularity.min_epsilon must be >= 0, got {self.min_epsilon}")
        if not (self.window_days >= 0 and math.isfinite(self.window_days)):
            raise ConfigError(f"popularity.window_days must be >= 0 (0: all), got {self.window_days}")


OnlineArmBase = Literal["popularity", "text", "federated", "central"]
ONLINE_ARM_BASES: tuple[OnlineArmBase, ...] = ("popularity", "text", "federated", "central")
FLAT_SUFFIX = "+flat"  # an arm whose For you is not diversified (HomepageRules.diversity = 0)
OnlineEventStore = Literal["memory", "sqlite"]


@dataclass(frozen=True, kw_only=True)
class OnlineConfig:
    """The online loop, simulated (`fedhome-sim online`, simulation/online_loop.py): shoppers of the synthetic
    shop open a homepage composed on their device each day, click by a taste-driven click model, and the
    arms learn from the events overnight. Not part of a Flower run's config: the loop builds the federated
    arm's run config from the FedhomeConfig it is given (model, federated, privacy) and the plan here.

    Arms: "popularity" (the shop's event counts so far), "text" (the untrained model start: text
    similarity), "federated" (`rounds_per_day` federated rounds a night under user-level DP, by the server's
    Coordinator), "central" (non-private retraining on every shopper's events, warm-started day to day),
    each composing the product's homepage (For you diversified with HomepageRules.diversity = `diversity`,
    the homepage's default), and each also as "<arm>+flat" (For you not diversified: diversity 0).

    Privacy: the federated arm's `epsilon` is a LIFETIME user-level budget over the whole horizon: its noise
    multiplier is calibrated for (days - 1) * rounds_per_day rounds at `sample_rate` (no night after the last
    day: nobody would see its release), and a round past it is not run (the ledger's entries state the
    epsilon spent so far).
    """

    days: int = 30
    shoppers: int = 3_000
    items: int = 2_000
    rounds_per_day: int = 2  # K federated rounds each night
    epsilon: float = 8.0  # user-level, over all (days - 1) * rounds_per_day rounds (PLD)
    delta: float = 0.0  # 0: shoppers ** -1.1
    # q of the federated arm's Poisson sampling (overrides federated.sample_rate, whose default 0.05 is for
    # shops of tens of thousands: at 3,000 shoppers it samples 150 a round and the noise drowns them)
    sample_rate: float = 0.2
    arms: tuple[str, ...] = ("popularity", "text", "federated", "central")
    seed: int = 0  # visits, intents, clicks, organic browsing, the federated arm's sampling and noise
    visit_rate: float = 0.2  # mean daily P(a shopper opens the app), scaled by their session rate
    organic_rate: float = 0.3  # P(a visiting shopper also browses the shop outside the homepage first)
    central_steps_per_day: int = 50  # Adam steps of 256 examples a night for the central arm
    # ... and on the first night this many epochs over every example first: the upper reference starts from
    # a model trained on the shop's whole log (the non-private shop has had it all along)
    central_warmup_epochs: int = 2
    event_store: OnlineEventStore = "memory"  # "sqlite": one SDK EventStore file per shopper and arm
    history_events: int = 50  # most recent events the homepage reads (EventStore.recent's default)
    # HomepageRules overrides
    section_size: int = 8
    per_category: int = 3
    because_sections: int = 2
    diversity: float = 0.3  # HomepageRules.diversity of every arm but "+flat" ones (its default; in (0, 1])

    def __post_init__(self) -> None:
        for name in ("days", "shoppers", "items", "rounds_per_day", "epsilon", "central_steps_per_day"):
            _positive(f"online.{name}", getattr(self, name))
        for name in ("section_size", "per_category", "history_events"):
            _positive(f"online.{name}", getattr(self, name))
        _fraction("online.delta", self.delta)
        for name in ("visit_rate", "organic_rate"):
            _fraction(f"online.{name}", getattr(self, name), upper_open=False)
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"online.sample_rate must be in (0, 1], got {self.sample_rate}")
        if not 0.0 < self.diversity <= 1.0:
            raise ConfigError(f"online.diversity must be in (0, 1], got {self.diversity}")
        if self.because_sections < 0 or self.seed < 0 or self.central_warmup_epochs < 0:
            raise ConfigError("online.because_sections, seed and central_warmup_epochs must be >= 0")
        if self.event_store not in ("memory", "sqlite"):
            raise ConfigError(f"online.event_store must be 'memory' or 'sqlite', got {self.event_store!r}")
        known = [*ONLINE_ARM_BASES, *(a + FLAT_SUFFIX for a in ONLINE_ARM_BASES)]
        unknown = [a for a in self.arms if a not in known]
        if unknown or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"online.arms must be distinct names of {known}, got {list(self.arms)}")


def online_with_overrides(config: OnlineConfig, overrides: dict[str, Any]) -> OnlineConfig:
    """`with_overrides` for the online section, whose keys are given without their "online." prefix; an
    unknown key's error names it with the prefix ("online.dayz; did you mean online.days?")."""
    updated: OnlineConfig = _with_overrides(config, overrides, prefix="online.")
    return updated


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """The model service (`fedhome-server serve`): what it serves, its limits. Not part of a run's config."""

    release_store: Path = Path("releases")  # a ReleaseStore folder
    run_dir: Path = Path("runs/federated")  # the run whose ledger and privacy report are served
    public_key: Path = Path("ledger_public_key.pem")  # verifies the ledger, the releases and the index
    signing_key: str = ""  # the server's Ed25519 key for admin actions that sign (withdraw); "" = none
    # The signed release index expires this long after it is signed; with a signing key the service re-signs
    # it once less than half is left (without one: `fedhome-server refresh-index` from a timer)
    index_lifetime_s: float = 7 * 24 * 3600.0
    admin_token_env: str = "FEDHOME_ADMIN_TOKEN"  # the environment variable holding the admin token
    max_request_bytes: int = 64 * 1024  # larger request bodies are refused with 413
    max_page_size: int = 500  # catalogue items per page, at most
    max_catalogue_batch: int = 100  # items per admin catalogue write (embedded synchronously), at most
    demo_shoppers: str = (
        ""  # JSON lines of synthetic shoppers for the /demo page (server/api/demo_shoppers.py)
    )
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_page_size", "max_catalogue_batch", "port", "index_lifetime_s"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class ServiceSecrets:
    """The model service's secrets, read once when it starts (never at import, never per request)."""

    admin_token: str = field(default="", repr=False)  # "" (or under 16 characters): admin routes are off

    @classmethod
    def from_environment(cls, config: ServiceConfig) -> ServiceSecrets:
        """The admin token from the environment variable config.admin_token_env ("" when it is unset)."""
        return cls(admin_token=os.environ.get(config.admin_token_env, ""))


@dataclass(frozen=True, kw_only=True)
class FedhomeConfig:
    """Everything a fedhome run is configured with."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mf: MFConfig = field(default_factory=MFConfig)  # the matrix factorisation baseline
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    trending: TrendingConfig = field(default_factory=TrendingConfig)  # DP trending counts
    start_check: StartCheckConfig = field(default_factory=StartCheckConfig)  # ship the start if training lost
    popularity: PopularityReleaseConfig = field(default_factory=PopularityReleaseConfig)  # the prior's counts

    def __post_init__(self) -> None:
        if self.privacy.record_level and self.federated.devices_per_node != "one":
            raise ConfigError(
                "privacy.record_level (record-level DP-SGD on the device) needs federated.devices_per_node = "
                f"'one' (each node one user's device), got {self.federated.devices_per_node!r}"
            )
        if self.start_check.enabled == "on" and self.start_check_blocker:
            raise ConfigError(f"start_check.enabled = 'on', but {self.start_check_blocker}")
        if self.popularity.enabled == "on" and self.popularity_release_blocker:
            raise ConfigError(f"popularity.enabled = 'on', but {self.popularity_release_blocker}")

    @property
    def start_check_blocker(self) -> str:
        """Why the start check cannot run honestly with these settings ("" when it can)."""
        if self.privacy.mode == "local":
            return (
                "privacy mode 'local' promises that what a device sends is private against the server "
                "itself, and the start check's node sums would reach the server in the clear (its noise is "
                "added centrally); set start_check.enabled = 'off' or 'auto'"
            )
        if self.privacy.secure_aggregation:
            return (
                "with secure aggregation the server must never see a node's sum in the clear, and the start "
                "check has no securely aggregated path (its node sums would reach the server un-noised); set "
                "start_check.enabled = 'off' or 'auto'"
            )
        if self.federated.train_on_valid:
            return (
                "federated.train_on_valid = true: the devices trained on their validation rows, so no "
                "held-out row is left to compare the trained model with its start on (the check would favour "
                "the trained model); set start_check.enabled = 'off' or 'auto'"
            )
        return ""

    @property
    def runs_start_check(self) -> bool:
        """Does the run make its start check (StartCheckConfig: "auto" where it can run honestly, or "on")?"""
        return self.start_check.enabled != "off" and not self.start_check_blocker

    @property
    def popularity_release_blocker(self) -> str:
        """Why the popularity prior's count release cannot run with these settings ("" when it can)."""
        if not self.model.popularity_prior:
            return "model.popularity_prior = false: the model has no popularity prior to release counts for"
        if self.privacy.mode == "local":
            return (
                "privacy mode 'local' promises that what a device sends is private against the server "
                "itself, and the release's node sums would reach the server in the clear (its noise is added "
                "centrally); set popularity.enabled = 'off' or 'auto'"
            )
        if self.privacy.secure_aggregation:
            return (
                "with secure aggregation the server must never see a node's sum in the clear, and the "
                "popularity count release has no securely aggregated path; set popularity.enabled = 'off' or "
                "'auto'"
            )
        return ""

    @property
    def popularity_release_note(self) -> str:
        """Why the run makes no popularity count release ("" when it makes one)."""
        setting = self.popularity.enabled
        if setting == "off":
            return "popularity.enabled = 'off'" if self.model.popularity_prior else ""
        if self.popularity_release_blocker:
            return self.popularity_release_blocker if self.model.popularity_prior else ""
        low = self.privacy.mode == "central" and self.privacy.target_epsilon < self.popularity.min_epsilon
        if setting == "auto" and low:
            return (
                f"privacy.target_epsilon {self.privacy.target_epsilon:g} < popularity.min_epsilon "
                f"{self.popularity.min_epsilon:g}: the noise the release would need leaves the prior "
                "useless, and its budget is spent on training (popularity.enabled = 'on' forces it)"
            )
        return ""

    @property
    def runs_popularity_release(self) -> bool:
        """Does the run make the popularity prior's DP count release before its first round
        (PopularityReleaseConfig: "auto" where it can run and is worth its budget, or "on")?"""
        return self.model.popularity_prior and not self.popularity_release_note


def from_flat(flat: Mapping[str, Any], base: FedhomeConfig | None = None) -> FedhomeConfig:
    """A FedhomeConfig from dotted keys ("federated.rounds": 5), e.g. Flower's flattened run config."""
    config: FedhomeConfig = with_overrides(base or FedhomeConfig(), dict(flat))
    return config


def to_flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """The inverse of `from_flat`: {dotted key: value} with paths and tuples as text (JSON-safe)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(to_flat(value, key + "."))
        elif isinstance(value, Path):
            out[key] = str(value)
        elif isinstance(value, tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = value
    return out


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of a config dataclass with dotted-key overrides ("train.epochs": 3), validated again.

    String values are converted to the field's type, so values straight from a command line work. An
    unknown key is a ConfigError naming the full key and the nearest known one.
    """
    return _with_overrides(config, overrides, prefix="")


def _with_overrides(config: Any, overrides: dict[str, Any], *, prefix: str) -> Any:
    """`with_overrides` on the section of the root config at `prefix` ("" for the root, else "federated.")."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        known = head in {f.name for f in dataclasses.fields(config)}
        if not known or (rest and not dataclasses.is_dataclass(getattr(config, head))):
            raise _unknown_key(config, key, prefix=prefix)
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = _convert(config, head, value)
    for head, sub in nested.items():
        direct[head] = _with_overrides(getattr(config, head), sub, prefix=f"{prefix}{head}.")
    try:
        return dataclasses.replace(config, **direct)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def _unknown_key(config: Any, key: str, *, prefix: str) -> ConfigError:
    """The error for `key` in the section at `prefix`: the full dotted key, and the nearest key of that
    section when one is close (compared within the section, so a shared "federated." does not count)."""
    nearest = difflib.get_close_matches(key, to_flat(config), n=1)
    hint = f"; did you mean {prefix}{nearest[0]}?" if nearest else ""
    return ConfigError(f"unknown config key {prefix + key!r}{hint}")


def _convert(config: Any, name: str, value: Any) -> Any:
    current = getattr(config, name)
    if not isinstance(value, str) or isinstance(current, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(value)
            return value.lower() in {"true", "1", "yes"}
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, Path):
            return Path(value)
        if isinstance(current, tuple):
            parts = [v.strip() for v in value.split(",") if v.strip()]
            annotation = str(next(f.type for f in dataclasses.fields(config) if f.name == name))
            return tuple(parts) if "str" in annotation else tuple(int(v) for v in parts)
    except ValueError as exc:
        raise ConfigError(f"config key {name!r}: cannot read {value!r} as {type(current).__name__}") from exc
    raise ConfigError(f"config key {name!r} cannot be set from text")
