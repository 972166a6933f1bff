"""Typed reads of the scalar values in Flower records (config and metric records hold unions of types)."""

from __future__ import annotations

from shared.errors import UpdateRejectedError


def as_float(value: object, *, name: str) -> float:
    """`value` as a float; UpdateRejectedError unless it is a real number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UpdateRejectedError(f"record value {name!r} is not a number")
    return float(value)


def as_int(value: object, *, name: str) -> int:
    """`value` as an int; UpdateRejectedError unless it is an integral number. Integers are taken as they
    are: through a float, seeds above 2^53 would lose their low bits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = as_float(value, name=name)
    if not number.is_integer():
        raise UpdateRejectedError(f"record value {name!r} is not an integer")
    return int(number)
