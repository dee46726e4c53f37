"""Card-payment events for the benchmarks, with a chosen fraction of anomalies.

Each event is one JSON object of about 450 bytes, shaped like what a card processor
publishes: ids, a timestamp, merchant and device details and the amount. Amounts are
written as producers write them: integers, two-decimal numbers and a few edge texts
around the threshold (``100``, ``100.00``, ``1e2``, ``100.0000000001``). Whether an
event is an anomaly is decided here from the amount's decimal text, independently of
the processor's rules, so the benchmarks can check what each consumer forwarded.

The partition key of an event is its card id, so a consumer that receives only the
payload (the peer) can forward with the same key as one that receives the record.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

# The default rule set of the processor forwards transaction_amount > 100.
THRESHOLD: Final = Decimal(100)
ABOVE_EDGES: Final = ("100.01", "100.0000000001", "101", "1e3")
AT_OR_BELOW_EDGES: Final = ("100", "100.0", "100.00", "1e2", "99.99", "0", "-5.5")
# The share of events whose amount is one of the edge texts above.
EDGE_FRACTION: Final = 0.02

CHANNELS: Final = ("card_present", "ecommerce", "contactless", "recurring")
COUNTRIES: Final = ("DE", "FR", "NL", "ES", "IT", "PL", "SE", "IE", "PT", "BE")
CURRENCIES: Final = {"DE": "EUR", "FR": "EUR", "NL": "EUR", "ES": "EUR", "IT": "EUR", "PL": "PLN", "SE": "SEK"}
MERCHANT_CATEGORIES: Final = ("5411", "5812", "5999", "4111", "5732", "7011", "5541", "4829")
USER_AGENTS: Final = (
    "Mozilla/5.0 (Linux; Android 15) Mobile",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_2 like Mac OS X) Mobile",
    "PaymentTerminal/4.2",
)
CARD_POOL_SIZE: Final = 50_000


@dataclass(frozen=True, slots=True)
class Event:
    """One encoded event, the partition key it is written with, and whether it is an anomaly."""

    data: bytes
    partition_key: str
    anomalous: bool


def _amount(rng: random.Random, anomalous: bool) -> str:
    if rng.random() < EDGE_FRACTION:
        return rng.choice(ABOVE_EDGES if anomalous else AT_OR_BELOW_EDGES)
    if anomalous:
        return f"{rng.uniform(100.01, 5000):.2f}" if rng.random() < 0.5 else str(rng.randint(101, 20_000))
    return f"{rng.uniform(0.5, 99.99):.2f}" if rng.random() < 0.6 else str(rng.randint(1, 100))


def iter_events(count: int, anomaly_fraction: float, seed: int, first_id: int = 0) -> Iterator[Event]:
    """Yield ``count`` events, each an anomaly with probability ``anomaly_fraction``.

    The same seed and ``first_id`` give the same events, so runs are comparable.
    """
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise ValueError(f"anomaly fraction {anomaly_fraction} is out of range: expected 0 to 1")
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    for index in range(first_id, first_id + count):
        amount = _amount(rng, rng.random() < anomaly_fraction)
        card = f"card-{rng.randrange(CARD_POOL_SIZE):08x}"
        country = rng.choice(COUNTRIES)
        minute, second, millis = (index // 60_000) % 60, (index // 1000) % 60, index % 1000
        data = (
            f'{{"event_id": "evt-{index:012d}", "event_time": "2026-12-04T20:{minute:02d}:{second:02d}.{millis:03d}Z", '
            f'"card_id": "{card}", "merchant_id": "m-{rng.randrange(200_000):06d}", '
            f'"merchant_category_code": "{rng.choice(MERCHANT_CATEGORIES)}", "channel": "{rng.choice(CHANNELS)}", '
            f'"country": "{country}", "currency": "{CURRENCIES.get(country, "EUR")}", '
            f'"transaction_amount": {amount}, '
            f'"device": {{"id": "dev-{rng.getrandbits(48):012x}", "ip": "198.51.100.{rng.randrange(1, 255)}", '
            f'"user_agent": "{rng.choice(USER_AGENTS)}"}}, '
            f'"risk": {{"card_age_days": {rng.randrange(3650)}, "new_device": {"true" if rng.random() < 0.05 else "false"}}}}}'
        ).encode()
        yield Event(data, card, Decimal(amount) > THRESHOLD)


def generate_events(count: int, anomaly_fraction: float, seed: int = 6, first_id: int = 0) -> list[Event]:
    """Return ``count`` events as a list; see ``iter_events``."""
    return list(iter_events(count, anomaly_fraction, seed, first_id))
