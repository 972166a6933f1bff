"""The ledger fields of participation caps: refused users, the cap, its segment, and both epsilon bounds.

Written into every training round's entry (server/rounds/coordinator.py). `refused_users` (sampled users whose
device refused to train because it had reached its cap; a count, nothing per user) is always written. With
a run-wide cap k >= 1 also: participation_cap (k), cap_segment (1 for the first start of the run, +1 at
each resume: the devices' counts may restart there), user_epsilon_poisson and user_epsilon_cap ({"pld",
"rdp"}, the two bounds of shared/privacy/capped_accounting.py) and epsilon_bound ("cap" or "poisson", which
one gives the PLD figure); user_epsilon is then the smaller bound under each accountant.
"""

from __future__ import annotations

from typing import Any

from shared.privacy.accounting import UserLevelAccountant, json_epsilon
from shared.privacy.capped_accounting import CappedAccountant


def cap_ledger_fields(accountant: UserLevelAccountant, *, refused_users: int) -> dict[str, Any]:
    """The entry's cap fields after the round has been recorded in `accountant` (epsilons "inf" when the
    run adds no noise)."""
    fields: dict[str, Any] = {"refused_users": int(refused_users)}
    if not isinstance(accountant, CappedAccountant):
        return fields
    fields["participation_cap"] = accountant.participation_cap
    fields["cap_segment"] = len(accountant.segment_starts)
    bounds = accountant.bounds()
    fields["user_epsilon_poisson"] = {k: json_epsilon(v) for k, v in bounds["poisson"].items()}
    fields["user_epsilon_cap"] = {k: json_epsilon(v) for k, v in bounds["cap"].items()}
    fields["epsilon_bound"] = "cap" if bounds["cap"]["pld"] < bounds["poisson"]["pld"] else "poisson"
    return fields
