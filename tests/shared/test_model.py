"""The two-tower model: shapes, the text-similarity start, the losses (logQ included), ONNX parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import ModelConfig
from shared.data.schema import UNKNOWN_TIME, Catalogue
from shared.data.split import UserSequences
from shared.derived_items import attribute_columns
from shared.errors import ConfigError, DataError
from shared.history import N_GAP_BUCKETS, gap_buckets, request_context
from shared.model import (
    HistoryBatch,
    ItemFeatures,
    NegativeSampler,
    TwoTower,
    full_softmax_loss,
    gather_histories,
    sampled_softmax_loss,
)
from shared.model.features import popularity_from_counts, price_buckets, recent_item_counts

N_ITEMS, TEXT_DIM = 40, 16
CONFIG = ModelConfig(dim=8, max_history=5, n_heads=2, n_layers=1, residual_rank=4, dropout=0.0)


def catalogue(n: int = N_ITEMS) -> Catalogue:
    return Catalogue(
        item_ids=[f"i{i}" for i in range(n)],
        titles=[f"item {i}" for i in range(n)],
        categories=[f"Dept{i % 3} > Leaf{i % 5}" for i in range(n)],
        brands=[""] * n,
        descriptions=[""] * n,
        price=np.where(np.arange(n) % 4 == 0, np.nan, np.arange(n, dtype=np.float32)).astype(np.float32),
        created_at=np.full(n, UNKNOWN_TIME, dtype=np.int64),
        on_promotion=np.arange(n) % 7 == 0,
    )


def unit_text(n: int = N_ITEMS, dim: int = TEXT_DIM, seed: int = 0) -> np.ndarray:
    text = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return text / np.linalg.norm(text, axis=1, keepdims=True)


def features(**kw: int) -> ItemFeatures:
    return ItemFeatures.from_catalogue(catalogue(), unit_text(**kw))


def sequences(rows: list[list[int]], step_s: int = 3_600) -> UserSequences:
    """Users' item sequences with one event an hour, event type cycling through view/cart/purchase."""
    lengths = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.array([i for r in rows for i in r], dtype=np.int32)
    events = (np.arange(items.shape[0]) % 3).astype(np.int8)
    times = 1_700_000_000 + step_s * np.arange(items.shape[0], dtype=np.int64)
    return UserSequences(offsets, items, events, times)


def history(rows: list[list[int]], max_history: int = CONFIG.max_history) -> HistoryBatch:
    seqs = sequences(rows)
    users = np.arange(len(rows))
    ends = seqs.offsets[1:]
    now = np.full(len(rows), 1_700_000_000 + 3_600 * (seqs.items.shape[0] + 1), dtype=np.int64)
    return gather_histories(seqs, users, ends, now, max_history)


def randomised(model: TwoTower, seed: int = 1) -> TwoTower:
    """The model with every parameter drawn at random (so zero-initialised layers matter in checks)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


# --- features -----------------------------------------------------------------------------------------


def test_item_features_from_catalogue() -> None:
    feats = features()
    assert feats.text.shape == (N_ITEMS, TEXT_DIM) and feats.text.dtype == np.float32
    assert feats.category.tolist()[:4] == [1, 2, 3, 1]  # "Dept0", "Dept1", "Dept2", "Dept0"
    assert (feats.price_bucket[::4] == 0).all() and (feats.price_bucket[1::4] > 0).all()
    assert feats.promotion.tolist()[:8] == [1, 0, 0, 0, 0, 0, 0, 1]
    attributes = feats.attributes()
    assert attributes.shape == (N_ITEMS, feats.n_categories + 9 + 1)
    assert (attributes[:, :-1].sum(axis=1) == 2).all()  # one category and one price bucket per item


def test_item_features_reject_bad_embeddings() -> None:
    with pytest.raises(DataError, match="shape"):
        ItemFeatures.from_catalogue(catalogue(), unit_text(n=N_ITEMS - 1))
    bad = unit_text()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        ItemFeatures.from_catalogue(catalogue(), bad)


def test_item_features_come_back_from_a_releases_attribute_columns() -> None:
    """What a device trains with (client/training/device_store.py): the release's set columns of the
    attribute multi-hot give back the category, price bucket and promotion codes; a row without its one
    category or price column is refused."""
    original = features()
    multi_hot = original.attributes()
    columns = attribute_columns(multi_hot)
    back = ItemFeatures.from_attribute_columns(original.text, columns, multi_hot.shape[1])
    for name in ("category", "price_bucket", "promotion"):
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    np.testing.assert_array_equal(back.attributes(), multi_hot)
    broken = columns.copy()
    broken[3] = -1
    with pytest.raises(DataError, match="exactly one category"):
        ItemFeatures.from_attribute_columns(original.text, broken, multi_hot.shape[1])


def test_price_buckets_are_quantiles_and_unknown_is_zero() -> None:
    prices = np.array([np.nan, *range(1, 81)], dtype=np.float32)
    buckets = price_buckets(prices)
    assert buckets[0] == 0
    assert np.bincount(buckets[1:]).tolist() == [0] + [10] * 8  # 80 prices, 8 equal buckets


def test_gather_histories_left_pads_and_keeps_the_most_recent() -> None:
    batch = history([[1, 2, 3, 4, 5, 6, 7], [9], []])
    assert batch.items.tolist() == [[3, 4, 5, 6, 7], [-1, -1, -1, -1, 9], [-1] * 5]
    assert batch.events[1].tolist() == [0, 0, 0, 0, 2] and (batch.events[0] > 0).all()  # row 7: code 1, +1
    assert batch.gaps[0].tolist() == gap_buckets(np.array([6, 5, 4, 3, 2]) * 3_600 + 3_600).tolist()
    assert (batch.gaps[2] == 0).all() and batch.hour.shape == (3,)


def test_gather_histories_rejects_an_end_outside_the_user() -> None:
    seqs = sequences([[1, 2], [3]])
    with pytest.raises(DataError):
        gather_histories(seqs, np.array([0]), np.array([3]), np.array([0]), 4)


def test_gap_buckets_and_request_context() -> None:
    hours = np.array([0, 1, 3, 7, 10**9])
    assert gap_buckets(hours * 3_600).tolist() == [1, 2, 3, 4, N_GAP_BUCKETS - 1]
    hour, weekday = request_context(np.array([0, 86_400 * 4 + 3_600 * 13]))  # Thu 1970-01-01, Mon 13:00
    assert hour.tolist() == [0, 13] and weekday.tolist() == [3, 0]


# --- towers -------------------------------------------------------------------------------------------


def test_tower_shapes_and_unit_user_vectors() -> None:
    model = randomised(TwoTower(features(), CONFIG))
    vectors, bias = model.items()
    assert vectors.shape == (N_ITEMS, TEXT_DIM) and bias.shape == (N_ITEMS,)
    some, some_bias = model.items(torch.tensor([3, 5]))
    assert torch.allclose(some, vectors[[3, 5]]) and torch.allclose(some_bias, bias[[3, 5]])
    users = model.user_vectors(history([[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]))
    assert users.shape == (3, TEXT_DIM)
    assert torch.allclose(users.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.scores(users, vectors, bias).shape == (3, N_ITEMS)


def test_no_per_item_parameters_unless_asked() -> None:
    small = TwoTower(ItemFeatures.from_catalogue(catalogue(40), unit_text(40)), CONFIG)
    large = TwoTower(ItemFeatures.from_catalogue(catalogue(400), unit_text(400)), CONFIG)
    assert small.n_trainable() == large.n_trainable()
    with_ids = TwoTower(features(), ModelConfig(**{**CONFIG.__dict__, "item_id_residual": True}))
    assert with_ids.n_trainable() == small.n_trainable() + N_ITEMS * CONFIG.residual_rank
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in small.modules())


def test_state_dict_holds_only_learned_weights() -> None:
    model = TwoTower(features(), CONFIG)
    state = model.state_dict()
    assert set(state) == {name for name, _ in model.named_parameters()}
    assert sum(t.numel() for t in state.values()) == model.n_trainable()


def test_default_model_is_small() -> None:
    model = TwoTower(ItemFeatures.from_catalogue(catalogue(), unit_text(dim=384)), ModelConfig())
    assert model.n_trainable() < 150_000


def test_untrained_model_ranks_by_text_similarity_to_the_last_item() -> None:
    feats = features()
    torch.manual_seed(0)
    model = TwoTower(feats, CONFIG).eval()
    rows = [[1, 2, 3], [7], [30, 12, 5, 8, 9, 11, 2]]
    with torch.no_grad():
        vectors, bias = model.items()
        scores = model.scores(model.user_vectors(history(rows)), vectors, bias).numpy()
    expected = feats.text[[r[-1] for r in rows]] @ feats.text.T  # cosine to the last item
    assert np.allclose(scores, CONFIG.init_temperature * expected, atol=1e-4)
    assert (np.argsort(-scores, axis=1, kind="stable")[:, :5] == np.argsort(-expected, axis=1)[:, :5]).all()


@pytest.mark.parametrize("options", [{"item_bias": False}, {"item_id_residual": True}])
def test_every_variant_starts_at_text_similarity(options: dict[str, bool]) -> None:
    feats = features()
    model = TwoTower(feats, ModelConfig(**{**CONFIG.__dict__, **options})).eval()
    with torch.no_grad():
        vectors, bias = model.items()
        users = model.user_vectors(history([[1, 2, 3]]))
    assert torch.allclose(vectors, torch.from_numpy(feats.text), atol=1e-6) and not bias.any()
    assert torch.allclose(users[0], torch.from_numpy(feats.text[3]), atol=1e-6)


def test_item_bias_can_be_switched_off() -> None:
    model = TwoTower(features(), ModelConfig(**{**CONFIG.__dict__, "item_bias": False}))
    with_bias = TwoTower(features(), CONFIG)
    assert with_bias.n_trainable() - model.n_trainable() == TEXT_DIM + 1
    assert not any(p.requires_grad for p in model.items.bias.parameters())


def test_user_without_history_gets_a_finite_unit_or_zero_vector() -> None:
    model = randomised(TwoTower(features(), CONFIG))
    with torch.no_grad():
        norm = model.user_vectors(history([[]])).norm(dim=1)
    assert torch.isfinite(norm).all() and float(norm[0]) == pytest.approx(1.0, abs=1e-5)
    untrained = TwoTower(features(), CONFIG).eval()
    with torch.no_grad():
        assert not untrained.user_vectors(history([[]])).any()  # no history, no taste: scores = item bias


def test_padding_content_is_ignored() -> None:
    model = randomised(TwoTower(features(), CONFIG))
    batch = history([[4, 9]])
    other = HistoryBatch(
        np.where(batch.items < 0, 17, batch.items), batch.events, batch.gaps, batch.hour, batch.weekday
    )
    with torch.no_grad():
        assert torch.allclose(model.user_vectors(batch), model.user_vectors(other), atol=1e-6)


def test_catalogue_paths_match_the_plain_ones() -> None:
    model = randomised(TwoTower(features(), CONFIG))
    batch = history([[1, 2, 3], [], [5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        code = model.items.hidden()
        users = model.user_vectors(batch)
        assert torch.allclose(users, model.user_vectors(batch, code), atol=1e-5)
        plain = model.scores(users, *model.items())
        assert torch.allclose(model.catalogue_scores(users, code), plain, atol=1e-4)
        low = model.catalogue_scores(users, bfloat16=True)
        assert torch.allclose(low, plain, rtol=2e-2, atol=2e-2 * float(plain.abs().max()))


def every_position_user_vectors(model: TwoTower, batch: HistoryBatch) -> torch.Tensor:
    """(B, E) user vectors the way the tower computed them before it skipped work: every block over every
    position, then the last position read (the reference for the tower's last-position-only block)."""
    users = model.users
    history = torch.from_numpy(batch.items).clamp(min=0)
    events, gaps = torch.from_numpy(batch.events), torch.from_numpy(batch.gaps)
    valid = events > 0
    vectors = model.items(history.reshape(-1))[0].reshape(*history.shape, -1) * valid.unsqueeze(-1)
    x = users.in_proj(vectors) + users.event_emb(events) + users.gap_emb(gaps) + users.position_emb
    for block in users.blocks:
        x = block(x, valid)  # (B, L, d): all positions
    context = users.hour_emb(torch.from_numpy(batch.hour)) + users.weekday_emb(
        torch.from_numpy(batch.weekday)
    )
    read = users.ln_out(x[:, -1]) + context
    return torch.nn.functional.normalize(vectors[:, -1] + users.out_proj(read), dim=-1, eps=1e-12)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_last_position_only_equals_every_position_in_vectors_and_gradients(n_layers: int) -> None:
    config = ModelConfig(dim=8, max_history=5, n_heads=2, n_layers=n_layers, residual_rank=4, dropout=0.0)
    model = randomised(TwoTower(features(), config))
    batch = history([[1, 2, 3], [], [5, 6, 7, 8, 9, 10, 11], [12]])
    weights = torch.randn(4, TEXT_DIM, generator=torch.Generator().manual_seed(3))
    results = []
    for compute in (every_position_user_vectors, lambda m, b: m.user_vectors(b)):
        model.zero_grad()
        users = compute(model, batch)
        (users * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((users.detach(), grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys() and "users.blocks.0.attn.qkv.weight" in got_grads
    for name, gradient in want_grads.items():
        torch.testing.assert_close(got_grads[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_history_features_change_the_user_vector() -> None:
    model = randomised(TwoTower(features(), CONFIG))
    batch = history([[1, 2, 3]])
    later = HistoryBatch(batch.items, batch.events, np.where(batch.gaps > 0, 9, 0), batch.hour, batch.weekday)
    with torch.no_grad():
        assert not torch.allclose(model.user_vectors(batch), model.user_vectors(later))


def test_temperature_is_learned_and_bounded() -> None:
    model = TwoTower(features(), CONFIG)
    assert math.isclose(float(model.temperature()), CONFIG.init_temperature, rel_tol=1e-6)
    with torch.no_grad():
        model.log_temperature.fill_(50.0)
    assert float(model.temperature()) == pytest.approx(100.0)


# --- losses -------------------------------------------------------------------------------------------


def test_full_softmax_loss_is_cross_entropy_over_the_remaining_items() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([1, 2])
    exclude = torch.tensor([[False, True, False, True], [True, False, True, False]])  # target never removed
    expected_row0 = -(2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    expected_row1 = math.log(3.0)
    loss = full_softmax_loss(logits, targets, exclude)
    assert float(loss) == pytest.approx((expected_row0 + expected_row1) / 2, rel=1e-6)
    plain = torch.nn.functional.cross_entropy(logits, targets)
    assert float(full_softmax_loss(logits, targets)) == pytest.approx(float(plain))


def test_sampled_softmax_with_an_exact_sample_equals_the_full_softmax() -> None:
    # q = (1/2, 1/4, 1/8, 1/8) and K = 8 draws: item j appears exactly K q_j times. With the logQ correction
    # and the positive's own draws dropped as accidental hits, the estimated partition function is exact.
    q = torch.tensor([0.5, 0.25, 0.125, 0.125])
    negatives = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    k = negatives.shape[0]
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.7], [1.5, 0.2, -0.4, 0.0]], requires_grad=True)
    targets = torch.tensor([2, 0])
    full = full_softmax_loss(logits, targets)
    log_count = torch.log(k * q[negatives])
    hits = negatives[None, :] == targets[:, None]
    sampled = sampled_softmax_loss(logits[[0, 1], targets], logits[:, negatives], log_count, hits)
    assert float(sampled) == pytest.approx(float(full), rel=1e-6)
    (grad_full,) = torch.autograd.grad(full, logits)
    (grad_sampled,) = torch.autograd.grad(
        sampled_softmax_loss(logits[[0, 1], targets], logits[:, negatives], log_count, hits), logits
    )
    assert torch.allclose(grad_full, grad_sampled, atol=1e-6)


def test_sampled_softmax_without_correction_is_biased_towards_popular_negatives() -> None:
    negatives = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.7]])
    targets = torch.tensor([2])
    hits = negatives[None, :] == targets[:, None]
    full = float(full_softmax_loss(logits, targets))
    uncorrected = sampled_softmax_loss(logits[0, targets], logits[:, negatives], torch.zeros(8), hits)
    assert abs(float(uncorrected) - full) > 0.1


def test_sampled_partition_estimate_is_unbiased_over_random_draws() -> None:
    gen = torch.Generator().manual_seed(0)
    counts = np.array([50, 20, 10, 5, 3, 1, 0, 0])
    sampler = NegativeSampler(counts, alpha=0.75, allowed=np.ones(8, dtype=bool))
    logits = torch.linspace(-1.0, 2.0, 8)
    target, k, trials = 3, 16, 4000
    estimates = []
    for _ in range(trials):
        items, log_count = sampler.sample(k, gen)
        kept = items != target
        estimates.append(float(torch.exp(logits[items] - log_count)[kept].sum()))
    truth = float(torch.exp(logits).sum() - torch.exp(logits[target]))
    assert np.mean(estimates) == pytest.approx(truth, rel=0.03)


def test_negative_sampler_distribution_and_exclusions() -> None:
    counts = np.array([0, 3, 8, 100])
    allowed = np.array([True, True, True, False])
    sampler = NegativeSampler(counts, alpha=0.5, allowed=allowed)
    expected = np.array([1.0, 2.0, 3.0, 0.0]) / 6.0
    assert np.allclose(sampler.probability.numpy(), expected)
    items, log_count = sampler.sample(1000, torch.Generator().manual_seed(1))
    assert not (items == 3).any()
    assert torch.allclose(log_count, torch.log(1000 * torch.from_numpy(expected)[items]).float())
    with pytest.raises(ConfigError):
        NegativeSampler(counts, alpha=1.0, allowed=np.zeros(4, dtype=bool))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=8), st.integers(0, 2))
def test_sampled_loss_is_never_negative(values: list[float], target: int) -> None:
    logits = torch.tensor([values])
    negatives = torch.arange(len(values))
    hits = negatives[None, :] == target
    loss = sampled_softmax_loss(logits[0, [target]], logits, torch.zeros(len(values)), hits)
    assert float(loss) >= -1e-6


# --- export -------------------------------------------------------------------------------------------


def test_user_tower_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    model = randomised(TwoTower(features(), CONFIG))
    batch = history([[1, 2, 3], [], [5, 6, 7, 8, 9, 10, 11], [12]])
    vectors, _ = model.items()
    inputs = (
        vectors.detach()[torch.from_numpy(batch.items).clamp(min=0)],
        *(torch.from_numpy(a) for a in (batch.events, batch.gaps, batch.hour, batch.weekday)),
    )
    names = ["history", "events", "gaps", "hour", "weekday"]
    path = tmp_path / "user_tower.onnx"
    torch.onnx.export(
        model.users.eval(),
        inputs,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["user_vector"],
        dynamic_axes={name: {0: "batch"} for name in [*names, "user_vector"]},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    with torch.no_grad():
        want = model.users(*inputs).numpy()
    assert got.shape == (4, TEXT_DIM)
    assert np.abs(got - want).max() < 1e-5
    (one,) = session.run(None, {n: t[1:2].numpy() for n, t in zip(names, inputs, strict=True)})
    assert np.abs(one - want[1:2]).max() < 1e-5


# --- the popularity prior -----------------------------------------------------------------------------


def test_recent_item_counts_count_each_users_most_recent_distinct_items() -> None:
    seqs = sequences([[1, 2, 3, 3, 2], [4], [], [5, 5, 5, 6]])
    counts = recent_item_counts(seqs, 8, items_per_user=2)  # most recent distinct: {2, 3}, {4}, {}, {6, 5}
    assert counts.tolist() == [0, 0, 1, 1, 1, 1, 1, 0]
    assert recent_item_counts(seqs, 8, items_per_user=1).tolist() == [0, 0, 1, 0, 1, 0, 1, 0]
    assert popularity_from_counts(np.array([-3.0, 0.0, np.e - 1])).tolist() == pytest.approx([0, 0, 1])


def test_popularity_prior_adds_a_weighted_offset_on_every_scoring_path() -> None:
    prior = np.random.default_rng(4).uniform(0, 3, N_ITEMS).astype(np.float32)
    config = ModelConfig(**{**CONFIG.__dict__, "popularity_prior": True, "popularity_weight": 0.7})
    plain = TwoTower(features(), ModelConfig(**{**CONFIG.__dict__, "popularity_prior": False})).eval()
    model = TwoTower(features().with_popularity(prior), config).eval()
    assert model.n_trainable() == plain.n_trainable() + 1  # one learned weight; the prior is not state
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}
    batch = history([[1, 2, 3], [7]])
    with torch.no_grad():
        _, bias = model.items()
        assert torch.allclose(bias, 0.7 * torch.from_numpy(prior))  # the start: text similarity + prior
        randomised(model)
        users = model.user_vectors(batch)
        vectors, bias = model.items()
        weight = model.items.popularity_weight
        assert weight is not None
        expected = model.items.bias(model.items.text).squeeze(-1) + weight * torch.from_numpy(prior)
        assert torch.allclose(bias, expected, atol=1e-6)
        assert torch.allclose(model.catalogue_scores(users), model.scores(users, vectors, bias), atol=1e-4)
        some = torch.tensor([3, 9, 30])
        assert torch.allclose(model.items(some)[1], bias[some], atol=1e-6)


def test_a_popularity_prior_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(DataError, match="popularity prior"):
        features().with_popularity(np.zeros(N_ITEMS + 1, np.float32)).popularity_prior()
