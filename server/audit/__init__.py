"""`fedhome-audit`: independent checks of a run's privacy record (signatures, chain, recomputed epsilon)."""

from server.audit.verify import EpsilonCheck, LedgerVerification, verify_ledger

__all__ = ["EpsilonCheck", "LedgerVerification", "verify_ledger"]
