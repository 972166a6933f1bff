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
        ("start_check.enabled", "maybe"),
        ("start_check.sample_rate", "0"),
        ("start_check.noise_multiplier", "0"),
        ("start_check.margin", "-1"),
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


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"privacy.secure_aggregation": "true"}, "secure aggregation"),
        ({"privacy.mode": "local"}, "privacy mode 'local'"),
        ({"federated.train_on_valid": "true"}, "trained on their validation rows"),
    ],
)
def test_the_start_check_is_off_where_it_cannot_run_honestly_and_refused_when_asked_for(
    settings: dict[str, str], why: str
) -> None:
    auto = with_overrides(FedhomeConfig(), settings)
    assert not auto.runs_start_check and why in auto.start_check_blocker  # "auto": off, with the reason
    with pytest.raises(ConfigError, match=f"start_check.enabled = 'on', but .*{why}"):
        with_overrides(FedhomeConfig(), {**settings, "start_check.enabled": "on"})


def test_the_start_check_runs_by_default_in_central_mode_and_without_noise() -> None:
    assert FedhomeConfig().runs_start_check and FedhomeConfig().start_check.enabled == "auto"
    assert with_overrides(
        FedhomeConfig(), {"privacy.mode": "none", "start_check.enabled": "on"}
    ).runs_start_check
    assert not with_overrides(FedhomeConfig(), {"start_check.enabled": "off"}).runs_start_check
