"""Configuration: validated once, overridable from text, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import DataConfig, FedhomeConfig, ModelConfig, TrainConfig, with_overrides
from shared.errors import ConfigError


def test_overrides_convert_text_and_nest() -> None:
    config = with_overrides(
        FedhomeConfig(),
        {"train.epochs": "3", "data.synthetic.n_users": "100", "encoder.cache_dir": "/tmp/x"},
    )
    assert config.train.epochs == 3
    assert config.data.synthetic.n_users == 100
    assert config.encoder.cache_dir == Path("/tmp/x")
    assert FedhomeConfig().train.epochs != 3 or FedhomeConfig().data.synthetic.n_users != 100


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.epochs", "0"),
        ("train.epochs", "three"),
        ("train.nope", "1"),
        ("data.cold_item_fraction", "1.5"),
        ("model.dim", "63"),
        ("data.skip_bad_rows", "maybe"),
    ],
)
def test_bad_values_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError):
        with_overrides(FedhomeConfig(), {key: value})


def test_configs_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        TrainConfig(3)  # type: ignore[call-arg]  # positional on purpose: must be refused
    config = ModelConfig()
    with pytest.raises(AttributeError):
        config.dim = 8  # type: ignore[misc]
    with pytest.raises(ConfigError):
        DataConfig(cold_item_fraction=-0.1)


def test_record_level_dp_sgd_needs_one_device_per_node() -> None:
    with pytest.raises(ConfigError, match="devices_per_node = 'one'"):
        with_overrides(FedhomeConfig(), {"privacy.record_level": "true"})  # shards by default
    one = {"privacy.record_level": "true", "federated.devices_per_node": "one"}
    assert with_overrides(FedhomeConfig(), one).privacy.record_level
