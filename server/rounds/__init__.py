"""The federated round loop: the coordinator, its privacy plan, the messages to nodes, ledger fields."""
