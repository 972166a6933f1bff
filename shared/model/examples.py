"""Training examples of the two-tower model: which rows of a user's sequence are prediction targets."""

from __future__ import annotations

import numpy as np

from shared.data.split import UserSequences


def training_rows(seqs: UserSequences) -> tuple[np.ndarray, np.ndarray]:
    """(users, rows): every flat row of `seqs` that has an earlier row of the same user and whose item is
    not a repeat of one of them. Repeats (the cart or purchase of an item viewed before) stay in later
    histories, but are not targets: the harness removes a user's earlier items from the candidates and
    leaves repeat targets out, and the homepage never recommends what the user already has."""
    lengths = seqs.lengths()
    users = np.repeat(np.arange(seqs.n_users), lengths)
    rows = np.arange(seqs.items.shape[0])
    order = np.lexsort((rows, seqs.items, users))  # by user, then item, then position
    repeat = np.zeros(rows.shape[0], dtype=bool)
    same = (users[order][1:] == users[order][:-1]) & (seqs.items[order][1:] == seqs.items[order][:-1])
    repeat[order[1:][same]] = True
    keep = (rows > seqs.offsets[users]) & ~repeat
    return users[keep], rows[keep]
