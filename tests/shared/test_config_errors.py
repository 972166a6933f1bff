"""What a person reads when a config key is wrong: the full dotted key, and the nearest known one."""

from __future__ import annotations

import pytest

from shared.config import EncoderConfig, FedhomeConfig, with_overrides
from shared.errors import ConfigError


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("federated.roundz", "unknown config key 'federated.roundz'; did you mean federated.rounds?"),
        ("federatd.rounds", "unknown config key 'federatd.rounds'; did you mean federated.rounds?"),
        ("train.epoch", "unknown config key 'train.epoch'; did you mean train.epochs?"),
        (
            "data.synthetic.n_user",
            "unknown config key 'data.synthetic.n_user'; did you mean data.synthetic.n_users?",
        ),
    ],
)
def test_an_unknown_key_is_named_in_full_with_the_nearest_one(key: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        with_overrides(FedhomeConfig(), {key: "3"})
    assert str(refused.value) == message


def test_no_suggestion_when_nothing_is_close() -> None:
    with pytest.raises(ConfigError) as refused:
        with_overrides(FedhomeConfig(), {"federated.xyzzy": "3"})
    assert str(refused.value) == "unknown config key 'federated.xyzzy'"  # not "did you mean federated.seed?"


def test_a_key_below_a_plain_value_is_unknown_not_a_crash() -> None:
    with pytest.raises(ConfigError) as refused:
        with_overrides(FedhomeConfig(), {"federated.rounds.extra": "3"})
    assert str(refused.value).startswith("unknown config key 'federated.rounds.extra'")


def test_a_section_config_names_keys_within_itself() -> None:
    with pytest.raises(ConfigError) as refused:
        with_overrides(EncoderConfig(), {"backnd": "torch"})
    assert str(refused.value) == "unknown config key 'backnd'; did you mean backend?"
