"""The simulation runner: load a shop, split it, embed its catalogue, fit a model, evaluate it, write results.

One function per step so the pipeline reads top to bottom in `run`. Every model is evaluated by the same
harness (simulation/evaluate.py) on the same split.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from server.embedding.catalogue_embedding import EmbeddingTable, embed_catalogue
from shared.config import FedhomeConfig
from shared.data.loaders import LoadReport
from shared.data.schema import Dataset
from shared.data.source import load_configured
from shared.data.split import Split, leave_one_out
from shared.model import ItemFeatures
from simulation.baselines import MatrixFactorization, Popularity, TextSimilarity
from simulation.central_training import make_scorer, refit, train
from simulation.evaluate import EvalResult, Scorer, evaluate

log = logging.getLogger(__name__)

ModelName = Literal["popularity", "text", "mf", "two-tower"]
MODEL_NAMES: tuple[ModelName, ...] = ("popularity", "text", "mf", "two-tower")


@dataclass
class ModelRun:
    """One model's results on one split."""

    name: ModelName
    valid: EvalResult
    test: EvalResult
    fit_time_s: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """What every model shares: the dataset, its split and (lazily) its item text embeddings."""

    config: FedhomeConfig
    dataset: Dataset
    split: Split
    load_report: LoadReport | None
    progress: bool
    _embeddings: EmbeddingTable | None = None

    def embeddings(self) -> EmbeddingTable:
        if self._embeddings is None:
            start = time.perf_counter()
            self._embeddings = embed_catalogue(
                self.dataset.catalogue, self.config.encoder, progress=self.progress
            )
            log.info(
                "catalogue embedded in %.1f s (table %s)",
                time.perf_counter() - start,
                self._embeddings.version,
            )
        return self._embeddings


def prepare(config: FedhomeConfig, *, progress: bool) -> Prepared:
    dataset, report = load_configured(config.data)
    split = leave_one_out(
        dataset, cold_item_fraction=config.data.cold_item_fraction, seed=config.data.split_seed
    )
    log.info(
        "%s: %d users, %d items, %d interactions, %d evaluated users, %d cold items",
        dataset.name,
        dataset.log.n_users,
        dataset.catalogue.n_items,
        dataset.log.n_rows,
        split.eval_users.size,
        int(split.cold_items.sum()),
    )
    return Prepared(config, dataset, split, report, progress)


def _evaluate_both(
    prep: Prepared, valid_scorer: Scorer, test_scorer: Scorer
) -> tuple[EvalResult, EvalResult]:
    valid = evaluate(prep.split, valid_scorer, stage="valid", config=prep.config.eval)
    test = evaluate(prep.split, test_scorer, stage="test", config=prep.config.eval)
    return valid, test


def fit_popularity(prep: Prepared) -> tuple[Scorer, Scorer, dict[str, Any]]:
    model = Popularity.fit(prep.split, count_valid_for_test=True)
    return model.score, model.score, {"test_counts_include_valid_rows": True}


def fit_text(prep: Prepared) -> tuple[Scorer, Scorer, dict[str, Any]]:
    table = prep.embeddings()
    model = TextSimilarity(prep.split, table.vectors)
    return model.score, model.score, {"embedding_table": table.version, "encoder": table.encoder_id}


def fit_mf(prep: Prepared) -> tuple[Scorer, Scorer, dict[str, Any]]:
    # User vectors only know the rows they were fitted on: fit again with the validation rows for the test.
    valid_model = MatrixFactorization.fit(prep.split, prep.config.mf)
    test_model = MatrixFactorization.fit(prep.split, prep.config.mf, rows=prep.split.train_and_valid())
    return valid_model.score, test_model.score, {"refit_on_train_and_valid": True}


def fit_two_tower(prep: Prepared) -> tuple[Scorer, Scorer, dict[str, Any]]:
    """Choose the epoch count on validation (training rows only), then, with `train.refit`, train a fresh
    model on train + validation rows for that many epochs and score the test stage with it."""
    table = prep.embeddings()
    features = ItemFeatures.from_catalogue(prep.dataset.catalogue, table.vectors)
    configs = prep.config
    selection = train(
        prep.split,
        features,
        model_config=configs.model,
        train_config=dataclasses.replace(configs.train, refit=False),
        eval_config=configs.eval,
        progress=prep.progress,
    )
    valid_scorer = make_scorer(selection.model, prep.split)
    final = selection.model
    if configs.train.refit:
        final, _ = refit(
            features, prep.split, configs.model, configs.train, selection.best_epoch, progress=prep.progress
        )
    details = {
        "best_epoch": selection.best_epoch,
        "refit_on_train_and_valid": configs.train.refit,
        "trainable_parameters": final.n_trainable(),
        "epochs": [dataclasses.asdict(e) for e in selection.epochs],
        "embedding_table": table.version,
    }
    return valid_scorer, make_scorer(final, prep.split), details


FITTERS: dict[ModelName, Callable[[Prepared], tuple[Scorer, Scorer, dict[str, Any]]]] = {
    "popularity": fit_popularity,
    "text": fit_text,
    "mf": fit_mf,
    "two-tower": fit_two_tower,
}


def run_model(prep: Prepared, name: ModelName) -> ModelRun:
    """Fit one model on the split and evaluate it on validation and test."""
    start = time.perf_counter()
    valid_scorer, test_scorer, details = FITTERS[name](prep)
    fit_time_s = time.perf_counter() - start
    valid, test = _evaluate_both(prep, valid_scorer, test_scorer)
    log.info("%s: valid NDCG@10 %.4f, test NDCG@10 %.4f", name, valid.overall.ndcg_10, test.overall.ndcg_10)
    return ModelRun(name, valid, test, fit_time_s, details)
