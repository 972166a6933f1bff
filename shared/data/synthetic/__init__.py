"""The built-in synthetic shop: a seeded generator of a catalogue, shoppers with tastes, and their sessions.

`generate_shop(config)` builds it in memory (demo sizes); `write_shop_csv(config, folder)` streams the same
shop to the project's CSV layout (items.csv + interactions.csv) for sizes up to millions of shoppers.
"""

from __future__ import annotations

from shared.data.synthetic.shop import USERS_PER_CHUNK, WriteReport, generate_shop, write_shop_csv

__all__ = ["USERS_PER_CHUNK", "WriteReport", "generate_shop", "write_shop_csv"]
