"""The Redis key layout of the pulses domain, and how its names are encoded.

- `ingestor:window:<hour>`: the live hash of one hour window. Per (tenant, sku, unit)
  group it holds `n|<group>`, the pulse count, and `a|<group>`, the amount in integer
  micro-units (with `a1|<group>`, `a2|<group>`... when a sum outgrows 64 bits).
- `ingestor:snapshot:<hour>:<batch-id>`: a window hash renamed away for a flush.
- `ingestor:windows` / `ingestor:snapshots`: sets naming the pending hashes, so a
  flush never has to SCAN a keyspace holding millions of dedupe keys.
  `ingestor:corrupt-snapshots` names snapshots a flush set aside, untouched.
- `ingestor:usage-version`, `ingestor:usage-total:<version>:<filter>`: cached row
  counts of the API, made unreachable by each flush commit (pulses/queries.py).
- `d<11-byte digest>`: one dedupe key per counted pulse, expiring after the horizon.
  Kept to 12 bytes on purpose: they are most of the memory the ingestor uses, and a
  key of 12 bytes or less takes the smallest allocation (about 100 bytes a key all
  told, against 117 at 18 bytes). 88 bits of digest: a billion ids held at once
  collide with a probability of about 2 in a billion. The ingestor owns its Redis
  database.

A group is encoded as the JSON array `[tenant, product_sku, use_unity]`: unambiguous
whatever the strings hold (the first version joined them with ':' and broke on a
tenant containing one).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from functools import lru_cache

PREFIX = "ingestor:"
PENDING_WINDOWS = PREFIX + "windows"
PENDING_SNAPSHOTS = PREFIX + "snapshots"
# Snapshots holding fields the ingest script never writes, set aside by a flush.
CORRUPT_SNAPSHOTS = PREFIX + "corrupt-snapshots"
FLUSH_LOCK = PREFIX + "flush-lock"
# Incremented whenever pulse_usage changes; cached row counts are keyed by it.
USAGE_VERSION = PREFIX + "usage-version"
USAGE_TOTAL_PREFIX = PREFIX + "usage-total:"
WINDOW_PREFIX = PREFIX + "window:"
SNAPSHOT_PREFIX = PREFIX + "snapshot:"
DEDUPE_PREFIX = b"d"
DEDUPE_DIGEST_BYTES = 11

COUNT_FIELD_PREFIX = b"n|"
AMOUNT_FIELD_PREFIX = b"a|"
_HOUR_FORMAT = "%Y-%m-%dT%H"
_SECONDS_PER_HOUR = 3600


def hour_of(timestamp: datetime) -> int:
    """The hour window of an aware timestamp, as hours since the Unix epoch."""
    return int(timestamp.timestamp()) // _SECONDS_PER_HOUR


@lru_cache(maxsize=1024)
def window_key(hour: int) -> str:
    """The live hash key of an hour window, e.g. `ingestor:window:2026-11-27T23`."""
    return WINDOW_PREFIX + hour_start(hour).strftime(_HOUR_FORMAT)


def hour_start(hour: int) -> datetime:
    """The UTC start of an hour window given as hours since the epoch."""
    return datetime.fromtimestamp(hour * _SECONDS_PER_HOUR, UTC)


def window_start_of_key(key: str) -> datetime:
    """The start of the hour a window or snapshot key belongs to."""
    if key.startswith(WINDOW_PREFIX):
        stamp = key[len(WINDOW_PREFIX) :]
    elif key.startswith(SNAPSHOT_PREFIX):
        stamp = key[len(SNAPSHOT_PREFIX) :].split(":", 1)[0]
    else:
        raise ValueError(f"not a window or snapshot key: {key!r}")
    return datetime.strptime(stamp, _HOUR_FORMAT).replace(tzinfo=UTC)


def new_snapshot_key(window: str) -> tuple[str, uuid.UUID]:
    """A fresh snapshot key for a live window key, and the flush-batch id inside it."""
    batch_id = uuid.uuid4()
    stamp = window[len(WINDOW_PREFIX) :]
    return f"{SNAPSHOT_PREFIX}{stamp}:{batch_id}", batch_id


def batch_id_of_snapshot(key: str) -> uuid.UUID:
    """The flush-batch id a snapshot key carries."""
    return uuid.UUID(key.rsplit(":", 1)[1])


@lru_cache(maxsize=65536)
def group_field(tenant: str, product_sku: str, use_unity: str) -> bytes:
    """The hash field suffix naming one (tenant, product_sku, use_unity) group."""
    # Cached: a batch repeats few groups many times, and json.dumps was a tenth of a
    # worker's time in the profile.
    # Compact separators: '["t","s","u"]'. Without a backslash (no escape inside), the
    # part between the brackets is a valid CSV row, which the flush relies on.
    return json.dumps([tenant, product_sku, use_unity], ensure_ascii=False, separators=(",", ":")).encode()


def parse_group_field(group: bytes) -> tuple[str, str, str]:
    """Inverse of `group_field`."""
    tenant, product_sku, use_unity = json.loads(group)
    return tenant, product_sku, use_unity


def _digest(kind: bytes, *parts: str) -> bytes:
    # Length-prefixed parts: ("a:b", "c") and ("a", "b:c") must not collide.
    h = hashlib.blake2b(kind, digest_size=DEDUPE_DIGEST_BYTES)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(b"%d:" % len(data))
        h.update(data)
    return DEDUPE_PREFIX + h.digest()


def dedupe_key_for_id(tenant: str, pulse_id: str) -> bytes:
    """Dedupe key of a pulse the producer gave an id: (tenant, id) counts once."""
    return _digest(b"id", tenant, pulse_id)


def dedupe_key_for_position(message_id: str, index: int) -> bytes:
    """Dedupe key of a pulse without id: its place in a message, stable on redelivery."""
    return _digest(b"pos", message_id, str(index))


def dedupe_key_for_amqp_message(message_id: str, index: int) -> bytes:
    """Dedupe key of a raw-queue pulse without id: the AMQP `message_id` its producer
    set, and its index in that message's body.

    A kind of its own, so a producer's message id can never meet a Celery task id.
    """
    return _digest(b"amqp", message_id, str(index))
