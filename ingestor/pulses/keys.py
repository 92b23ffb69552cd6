"""The Redis key layout of the pulses domain (layout v2), and how its names are encoded.

Every key of a window or snapshot carries a hash tag `{<tag>}`, so that on a Redis
Cluster every Lua call touches keys of one slot (`SHARD_TAGS`: one tag on a single
node, `CLUSTER_SHARD_TAG_COUNT` on a cluster; a pulse's tag comes from the digest of
its dedupe record, `tag_of_record`).
`<h>` is an hour `2026-11-27T23` (UTC), `<b>` a tenant bucket `0000`-`1023`
(`bucket_of`: blake2b-8 of the tenant, mod 1024), `<β>` a flush-batch id (uuid4).

- `ingestor:{t}:w:<h>:<b>`: a live window bucket, the hash of one hour's groups whose
  tenant falls in bucket b. Per (tenant, sku, unit) group it holds `n|<group>`, the
  pulse count, and `a|<group>`, the amount in integer micro-units (with `a1|<group>`,
  `a2|<group>`... when a sum outgrows 64 bits). A one-tenant pending read reads one
  bucket an hour, about 1/1024 of the pending groups.
- `ingestor:{t}:s:<h>:<β>:<b>`: a window bucket renamed away for a flush, frozen. It
  stays after its batch is committed, with an expiry of `PENDING_READ_GRACE_SECONDS`,
  so that a pending read whose PostgreSQL snapshot predates the commit still finds it.
- `ingestor:{t}:pending`: the tag's registry, a small hash. `v` is a version, bumped
  by every structural change a reader must see (a new live hour, a rename); `w:<h>` is
  "1" per hour with live buckets; `s:<β>` is `<h>|p` (pending), `<h>|d|<deadline ms>`
  (committed; its keys expire by the deadline) or `<h>|c` (corrupt, set aside). So a
  flush never has to SCAN a keyspace holding millions of dedupe keys.
- `ingestor:corrupt-snapshots`: names of snapshot keys a flush set aside, untouched.
- `ingestor:usage-version`, `ingestor:usage-total:<version>:<filter>`: cached row
  counts of the API, made unreachable by each flush commit (pulses/queries.py).
- `ingestor:{t}:m:<11-byte digest>`: the ledger of one message scope (a Celery task
  id, an AMQP message_id), for its pulses WITHOUT id: a bitmap, bit i set once pulse i
  of the message is counted, expiring a horizon after the message's last count. About
  N/8 bytes and one key per message, where v1 held one `d` key (~100 B) per pulse.
- `ingestor:{t}:i`: the id index, a small hash naming its live time buckets: per
  bucket starting at second `<s>`, `s<s>` = `<stop>|<P1>,<P2>...` (its end and the
  partition count of each of its segments), `f<s>` (ids in its last segment) and `n<s>`
  (ids in the bucket); and `l`, the second until which v1 `d` keys may exist (the
  first count of this release + a horizon; 0 on a fresh install).
- `ingestor:{t}:i:<s>:<P>:64:<path>` and `...:20:<path>`: partition `<path>` (the
  first log2(P) bits of a fingerprint's path, as '0'/'1' text) of the segment with P
  partitions of the bucket starting at `<s>`: two intsets, of the ids' 64-bit wide
  members and of their 20-bit narrow ones (`id_index_members`), each with its
  sentinel, expiring a horizon after the bucket's end. A pulse with an id is
  remembered here, as is the one pulse of a message of one pulse without id (see
  `id_fingerprint`).
- `ingestor:{t}:i:<s>:<P>:<p>`: the release before's partitions, hashes of 9-byte
  fields (bucket fields `b`, `c`, `t`); only read, until they expire.
- `d<11-byte digest>`: v1's dedupe key per counted pulse with an id (and without one
  before the message ledgers), expiring after the horizon; only read now, until the
  index's `l`.

The id index holds 12 bytes of members an id, about 14.5 all told (v1's `d` key about
96), an id from its count to a horizon after its bucket's end (buckets of half a
horizon: H to H + H/2). A new id is taken for one already held only if, in one
partition of a segment it is looked up in, its wide member is among the set's wide
members and its narrow member among the narrow ones. Within a partition those bits
are independent and a set holds at most `set-max-intset-entries` (512) members, so a
segment errs with a probability of at most (512 / 2^64) × (512 / 2^20) = 512² / 2^84,
1.4e-20; a lookup reads 3 segments in the steady state (more only while the rate
ramps up, at most 11 a bucket), so a billion ids held err with a probability of about
1e9 × 3 × 1.4e-20, 4 in 100 billion (v1's 88-bit keys: about 2 in a billion; the
release before's 72-bit hash fields: 3 in 10 billion); an error is a pulse not
counted. The ingestor owns its Redis database.

The previous layout (v1) is kept here only as what a flush drains while migrating
(pulses/legacy_flush.py): `ingestor:window:<h>` (one hash per hour),
`ingestor:snapshot:<h>:<β>`, and the sets `ingestor:windows` / `ingestor:snapshots`.

A group is encoded as the JSON array `[tenant, product_sku, use_unity]`: unambiguous
whatever the strings hold (the first version joined them with ':' and broke on a
tenant containing one).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "ingestor:"
# Snapshots holding fields the ingest script never writes, set aside by a flush.
CORRUPT_SNAPSHOTS = PREFIX + "corrupt-snapshots"
FLUSH_LOCK = PREFIX + "flush-lock"
# Incremented whenever pulse_usage changes; cached row counts are keyed by it.
USAGE_VERSION = PREFIX + "usage-version"
USAGE_TOTAL_PREFIX = PREFIX + "usage-total:"
DEDUPE_PREFIX = b"d"
DEDUPE_DIGEST_BYTES = 11

COUNT_FIELD_PREFIX = b"n|"
AMOUNT_FIELD_PREFIX = b"a|"
_HOUR_FORMAT = "%Y-%m-%dT%H"
_SECONDS_PER_HOUR = 3600

# Tenant buckets per (tag, hour): part of the key names, so a constant.
BUCKETS = 1024
# Hash tags on a single node: one, so a batch is one script call and a flush walks
# 1024 buckets an hour. Every caller loops over SHARD_TAGS.
SHARD_TAG_COUNT = 1
# Hash tags on a Redis Cluster: 16 evenly spaced slots, so 3 masters hold 5 or 6 tags
# each (within 13% of a third) and a skewed tenant spreads over all of them, while a
# batch is still at most 16 script calls. Part of the key names: changing it orphans
# what the previous count wrote, so it is a constant, not a setting.
CLUSTER_SHARD_TAG_COUNT = 16

# Registry fields and snapshot states.
REGISTRY_VERSION = "v"
LIVE_FIELD_PREFIX = "w:"
SNAPSHOT_FIELD_PREFIX = "s:"
PENDING_STATE = "p"
DONE_STATE = "d"
CORRUPT_STATE = "c"


def shard_tags(count: int) -> tuple[str, ...]:
    """The `count` hash tags: tag i is the first `"<i>.<j>"` (j = 0, 1...) whose cluster
    slot lies in [i * 16384 / count, (i + 1) * 16384 / count), so evenly spaced slots
    give each master of a cluster the same number of tags."""
    if count < 1 or count & (count - 1):
        raise ValueError(f"the number of shard tags must be a power of two, got {count}")
    width = REDIS_CLUSTER_HASH_SLOTS // count
    tags = []
    for i in range(count):
        j = 0
        while not i * width <= key_slot(f"{i}.{j}".encode()) < (i + 1) * width:
            j += 1
        tags.append(f"{i}.{j}")
    return tuple(tags)


SHARD_TAGS = shard_tags(SHARD_TAG_COUNT)


def use_shard_tags(count: int) -> tuple[str, ...]:
    """Make `count` tags this process's SHARD_TAGS (one Redis per process: the app
    sets it from its client, pulses.init_app); the previous SHARD_TAGS."""
    global SHARD_TAGS
    previous, SHARD_TAGS = SHARD_TAGS, shard_tags(count)
    return previous


def one_tag() -> bool:
    """Whether every pulse has the one tag (a single node): its record then does not matter."""
    return len(SHARD_TAGS) == 1


def tag_of_record(digest: bytes) -> str:
    """The tag of a pulse, from the digest of its dedupe record (its first 8 bytes).

    By the record, not the group: a (tenant, id) always lands in its record's slot,
    whatever sku it is sent with, and a skewed tenant spreads over every tag.
    """
    if len(SHARD_TAGS) == 1:
        return SHARD_TAGS[0]
    return SHARD_TAGS[int.from_bytes(digest[:8], "big") & (len(SHARD_TAGS) - 1)]


def tag_of_dedupe_key(dedupe_key: bytes) -> str:
    """The tag of a pulse deduplicated by `dedupe_key` (`d` + its digest)."""
    return tag_of_record(dedupe_key[len(DEDUPE_PREFIX) :])


@lru_cache(maxsize=65536)
def tag_of_key(key: str) -> str:
    """The tag inside a key's braces: `ingestor:{0.0}:w:...` -> `0.0`."""
    start = key.index("{") + 1
    return key[start : key.index("}", start)]


@lru_cache(maxsize=65536)
def bucket_of(tenant: str) -> int:
    """The tenant's bucket, 0..1023: blake2b-8 of its UTF-8, big-endian, mod 1024."""
    digest = hashlib.blake2b(tenant.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def hour_of(timestamp: datetime) -> int:
    """The hour window of an aware timestamp, as hours since the Unix epoch."""
    return int(timestamp.timestamp()) // _SECONDS_PER_HOUR


def hour_start(hour: int) -> datetime:
    """The UTC start of an hour window given as hours since the epoch."""
    return datetime.fromtimestamp(hour * _SECONDS_PER_HOUR, UTC)


@lru_cache(maxsize=4096)
def hour_stamp(hour: int) -> str:
    """An hour as it appears in key names and registry fields: `2026-11-27T23`."""
    return hour_start(hour).strftime(_HOUR_FORMAT)


def hour_of_stamp(stamp: str) -> int:
    """Inverse of `hour_stamp`; ValueError for anything else."""
    return hour_of(datetime.strptime(stamp, _HOUR_FORMAT).replace(tzinfo=UTC))


# An hour stamp as it appears inside a window or snapshot key of either layout.
_HOUR_STAMP_IN_KEY = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}")


def hour_stamp_in_key(key: str) -> str:
    """The hour stamp in a window or snapshot key (v2 or v1); ValueError for other keys."""
    found = _HOUR_STAMP_IN_KEY.search(key)
    if found is None:
        raise ValueError(f"not a window or snapshot key: {key!r}")
    return found.group()


def registry_key(tag: str) -> str:
    """The registry hash of a tag: `ingestor:{0.0}:pending`."""
    return f"{PREFIX}{{{tag}}}:pending"


@lru_cache(maxsize=65536)
def window_bucket_key(tag: str, hour: int, bucket: int) -> str:
    """The live window bucket: `ingestor:{0.0}:w:2026-11-27T23:0042`."""
    return f"{PREFIX}{{{tag}}}:w:{hour_stamp(hour)}:{bucket:04d}"


def window_key(tag: str, hour: int, tenant: str) -> str:
    """The live window bucket a tenant's pulse of `hour` is counted into."""
    return window_bucket_key(tag, hour, bucket_of(tenant))


def window_bucket_keys(tag: str, hour: int) -> list[str]:
    """The live window buckets of one (tag, hour), in bucket order."""
    return [window_bucket_key(tag, hour, bucket) for bucket in range(BUCKETS)]


def snapshot_bucket_key(tag: str, hour: int, batch_id: uuid.UUID | str, bucket: int) -> str:
    """A renamed window bucket: `ingestor:{0.0}:s:2026-11-27T23:<β>:0042`."""
    return f"{PREFIX}{{{tag}}}:s:{hour_stamp(hour)}:{batch_id}:{bucket:04d}"


def snapshot_bucket_keys(tag: str, hour: int, batch_id: uuid.UUID | str) -> list[str]:
    """The snapshot buckets of one flush batch, in bucket order (as its live buckets)."""
    prefix = f"{PREFIX}{{{tag}}}:s:{hour_stamp(hour)}:{batch_id}:"
    return [f"{prefix}{bucket:04d}" for bucket in range(BUCKETS)]


@lru_cache(maxsize=4096)
def live_field(hour: int) -> str:
    """The registry field saying an hour has live buckets: `w:2026-11-27T23`."""
    return LIVE_FIELD_PREFIX + hour_stamp(hour)


@lru_cache(maxsize=65536)
def live_field_of_window(key: str) -> str:
    """The registry field of the hour a live window bucket key belongs to."""
    _, stamp, _ = key.rsplit(":", 2)
    return LIVE_FIELD_PREFIX + stamp


def snapshot_field(batch_id: uuid.UUID | str) -> str:
    """The registry field of a flush batch: `s:<β>`."""
    return f"{SNAPSHOT_FIELD_PREFIX}{batch_id}"


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One flush batch in a registry: its hour, state, and deadline when committed."""

    batch_id: uuid.UUID
    hour: int
    state: str  # PENDING_STATE, DONE_STATE or CORRUPT_STATE
    deadline_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Registry:
    """A tag's registry as read at one instant."""

    tag: str
    version: int
    live_hours: tuple[int, ...]
    snapshots: tuple[SnapshotEntry, ...]

    def in_state(self, state: str) -> list[SnapshotEntry]:
        """The flush batches in `state`, oldest hour first."""
        return sorted(
            (e for e in self.snapshots if e.state == state), key=lambda e: (e.hour, str(e.batch_id))
        )


class CorruptRegistry(ValueError):
    """A registry field the ingestor never writes."""


def parse_registry(tag: str, fields: Mapping[bytes | str, bytes | str]) -> Registry:
    """A registry from its HGETALL; CorruptRegistry naming a field it cannot read."""
    version = 0
    live: list[int] = []
    snapshots: list[SnapshotEntry] = []
    for raw_name, raw_value in fields.items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        try:
            if name == REGISTRY_VERSION:
                version = int(value)
            elif name.startswith(LIVE_FIELD_PREFIX):
                live.append(hour_of_stamp(name[len(LIVE_FIELD_PREFIX) :]))
            elif name.startswith(SNAPSHOT_FIELD_PREFIX):
                stamp, state, *rest = value.split("|")
                batch_id = uuid.UUID(name[len(SNAPSHOT_FIELD_PREFIX) :])
                if state == DONE_STATE and len(rest) == 1:
                    snapshots.append(SnapshotEntry(batch_id, hour_of_stamp(stamp), state, int(rest[0])))
                elif state in (PENDING_STATE, CORRUPT_STATE) and not rest:
                    snapshots.append(SnapshotEntry(batch_id, hour_of_stamp(stamp), state))
                else:
                    raise ValueError(value)
            else:
                raise ValueError(name)
        except ValueError:
            raise CorruptRegistry(f"{registry_key(tag)}: unreadable field {name!r} = {value!r}") from None
    return Registry(tag, version, tuple(sorted(live)), tuple(snapshots))


@lru_cache(maxsize=65536)
def group_field(tenant: str, product_sku: str, use_unity: str) -> bytes:
    """The hash field suffix naming one (tenant, product_sku, use_unity) group."""
    # Cached: a batch repeats few groups many times, and json.dumps was a tenth of a
    # worker's time in the profile.
    # Compact separators: '["t","s","u"]'. Without a backslash (no escape inside), the
    # part between the brackets is a valid CSV row, which the flush relies on.
    return json.dumps([tenant, product_sku, use_unity], ensure_ascii=False, separators=(",", ":")).encode()


def tenant_field_prefix(tenant: str) -> bytes:
    """How every group field of `tenant` begins after its `n|`/`a|`: `["acme",`.

    JSON strings are prefix-free (the closing quote is never inside one), so a field
    begins with this exactly when its group's tenant is `tenant`.
    """
    return json.dumps([tenant], ensure_ascii=False, separators=(",", ":")).encode()[:-1] + b","


# A group field without any escape (no quote, backslash or control character inside a
# value): its three values are the text between the quotes.
_PLAIN_GROUP = re.compile(rb'\["([^"\\\x00-\x1f]*)","([^"\\\x00-\x1f]*)","([^"\\\x00-\x1f]*)"\]')


def parse_group_field(group: bytes) -> tuple[str, str, str]:
    """Inverse of `group_field`; ValueError for what it never writes."""
    # The plain case without the JSON decoder: 5x faster, and a pending read of a hot
    # tenant decodes 100,000 groups.
    plain = _PLAIN_GROUP.fullmatch(group)
    if plain is not None:
        tenant, product_sku, use_unity = plain.groups()
        return tenant.decode(), product_sku.decode(), use_unity.decode()
    tenant, product_sku, use_unity = json.loads(group)
    return tenant, product_sku, use_unity


def _length_prefixed(kind: bytes, parts: tuple[str | bytes, ...]) -> bytes:
    # Length-prefixed parts: ("a:b", "c") and ("a", "b:c") must not collide. Hashed in
    # one call, not one update a piece: the same digest, 0.3 µs less (of 1.5) a pulse.
    data = kind
    for part in parts:
        encoded = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
        data += b"%d:%b" % (len(encoded), encoded)
    return data


def _digest(kind: bytes, *parts: str) -> bytes:
    return (
        DEDUPE_PREFIX
        + hashlib.blake2b(_length_prefixed(kind, parts), digest_size=DEDUPE_DIGEST_BYTES).digest()
    )


# The id index (see the module docstring and aggregation.INGEST_SCRIPT): a fingerprint
# of 13 bytes, the first 4 its selector (the first 20 bits of which choose the
# partition), the other 9 the previous release's hash field; `id_index_members` cuts
# it into this release's members.
ID_FINGERPRINT_BYTES = 13
ID_SELECTOR_BYTES = 4
# Buckets per horizon: an id is remembered between H and H + H/2 (+ 1 s), and a new id
# is looked up in the 3 buckets that may still hold it (HEXISTS in the 2 that ended,
# HSETNX in the current one). Buckets of H/4 held ids 1/8 horizon less on average (11%
# less memory per id/s) but cost 2 HEXISTS more: bench/dedupe_micro.py measured 11.0
# against 8.9 µs of Redis a new id (517bdce's script: 16.7; v1's key: 2.2).
ID_BUCKETS_PER_HORIZON = 2


# The id index's field naming the second until which v1 `d` keys (and the previous
# release's one-pulse ledger bits) may exist: the ingest script reads them only before.
ID_INDEX_LEGACY_FIELD = "l"


# A fingerprint's members in a segment of the id index (aggregation.INGEST_SCRIPT):
# its path, the first 20 bits of its selector as '0'/'1' text, chooses the partition
# (a segment of 2^k partitions reads the first k, a string.sub in Lua where formatting
# a number costs 3 times more: at most 2^20 partitions); its "wide" member is bytes
# 4-11 as a signed 64-bit integer, its "narrow" one byte 12 and the selector's last 12
# bits (20 bits). Both are integers, so each partition's two sets are intsets: 8 and 4
# bytes a member, found by binary search (a listpack hash compares field by field:
# 3.3 µs an HEXISTS at 320 fields, 0.4 an SISMEMBER). The int64 minimum is the wide
# sets' sentinel, so a wide member never takes it.
ID_PATH_BITS = 20
_FIELD_BITS = 8 * (ID_FINGERPRINT_BYTES - ID_SELECTOR_BYTES)  # the previous release's hash field
_WIDE_MASK = (1 << 64) - 1


# A path's text as two halves from a table: a third of the time of formatting 20 bits.
_HALF_PATH_BITS = ID_PATH_BITS // 2
_HALF_PATH_MASK = (1 << _HALF_PATH_BITS) - 1
_HALF_PATHS = [f"{half:0{_HALF_PATH_BITS}b}" for half in range(1 << _HALF_PATH_BITS)]


def id_index_members(fingerprint: bytes) -> tuple[str, int, int]:
    """(path, wide member, narrow member) of a 13-byte id index fingerprint.

    From one integer of its 104 bits (this runs once per pulse: bit arithmetic is
    half the time of slicing bytes)."""
    x = int.from_bytes(fingerprint, "big")
    wide = (x >> 8) & _WIDE_MASK
    if wide >= 1 << 63:  # as a signed 64-bit integer, never the sentinel (the minimum)
        wide = max(wide - (1 << 64), -(1 << 63) + 1)
    narrow = (x & 0xFF) << 12 | (x >> _FIELD_BITS) & 0xFFF
    path = x >> (_FIELD_BITS + 12)
    return _HALF_PATHS[path >> _HALF_PATH_BITS] + _HALF_PATHS[path & _HALF_PATH_MASK], wide, narrow


def id_index_key(tag: str) -> str:
    """The id index of a tag, the hash naming its live buckets: `ingestor:{0.0}:i`."""
    return f"{PREFIX}{{{tag}}}:i"


# The id index's fields per bucket starting at second <s>: `s<s>` = `<stop>|<P1>,<P2>...`
# (its end, and the partition count of each of its segments), `f<s>` (ids in its last
# segment) and `n<s>` (ids in the bucket). The release before kept buckets of hashes
# under `b`, `c` and `t`: read until they expire, never written.
ID_BUCKET_FIELD = "s"
ID_BUCKET_FILLED_FIELD = "f"
ID_BUCKET_TOTAL_FIELD = "n"


class IdBucket(NamedTuple):
    """A bucket of the id index, as its fields in the index hash describe it."""

    start: int
    stop: int
    segments: list[int]
    total: int


def parse_id_index(fields: Mapping[bytes, bytes]) -> list[IdBucket]:
    """The buckets of sets an id index hash names (HGETALL), oldest first."""
    buckets = []
    for name, value in fields.items():
        if name[:1] == ID_BUCKET_FIELD.encode():
            stop, segments = value.split(b"|")
            total = fields.get(ID_BUCKET_TOTAL_FIELD.encode() + name[1:], b"0")
            buckets.append(
                IdBucket(int(name[1:]), int(stop), [int(p) for p in segments.split(b",")], int(total))
            )
    return sorted(buckets)


def ids_in_index(fields: Mapping[bytes, bytes]) -> int:
    """How many ids the buckets of an id index hash (HGETALL) have taken."""
    return sum(bucket.total for bucket in parse_id_index(fields))


def id_bucket_seconds(horizon_seconds: int) -> int:
    """How long one bucket of the id index takes ids: half the horizon, ≥ 1 s."""
    return max(1, -(-horizon_seconds // ID_BUCKETS_PER_HORIZON))


def _fingerprint(kind: bytes, *parts: str | bytes) -> bytes:
    data = _length_prefixed(kind, parts)
    return hashlib.blake2b(data, digest_size=ID_FINGERPRINT_BYTES, person=b"ingestor-id-idx").digest()


def id_fingerprint(tenant: str, pulse_id: str) -> bytes:
    """The id index fingerprint of a pulse with an id: (tenant, id) counts once."""
    return _fingerprint(b"id", tenant, pulse_id)


def place_fingerprint(scope: bytes, place: int) -> bytes:
    """The id index fingerprint of a pulse without id alone in its message: its message
    scope's digest and its place there (a kind of its own, never meeting an id)."""
    return _fingerprint(b"place", scope, str(place))


def dedupe_key_for_id(tenant: str, pulse_id: str) -> bytes:
    """Dedupe key of a pulse the producer gave an id: (tenant, id) counts once."""
    return _digest(b"id", tenant, pulse_id)


class Position(NamedTuple):
    """Where a pulse without id sits: its message scope's digest and its index there,
    and the v1 dedupe key it had before the message ledgers."""

    legacy_key: bytes
    scope: bytes
    place: int


@lru_cache(maxsize=4096)
def _scope_digest(kind: bytes, message_id: str) -> bytes:
    # One digest per message, not per pulse: its pulses share their ledger.
    return _digest(kind, message_id)[len(DEDUPE_PREFIX) :]


def message_ledger_key(tag: str, scope: bytes) -> bytes:
    """The bitmap of the counted pulses of one message scope in a tag."""
    return f"{PREFIX}{{{tag}}}:m:".encode() + scope


def position_in_message(message_id: str, index: int) -> Position:
    """The place of a pulse without id in a (Celery) message: stable on redelivery."""
    return Position(dedupe_key_for_position(message_id, index), _scope_digest(b"pos", message_id), index)


def position_in_amqp_message(message_id: str, index: int) -> Position:
    """The place of a raw-queue pulse without id in the AMQP message its producer named."""
    return Position(dedupe_key_for_amqp_message(message_id, index), _scope_digest(b"amqp", message_id), index)


def dedupe_key_for_position(message_id: str, index: int) -> bytes:
    """Dedupe key of a pulse without id: its place in a message, stable on redelivery."""
    return _digest(b"pos", message_id, str(index))


def dedupe_key_for_amqp_message(message_id: str, index: int) -> bytes:
    """Dedupe key of a raw-queue pulse without id: the AMQP `message_id` its producer
    set, and its index in that message's body.

    A kind of its own, so a producer's message id can never meet a Celery task id.
    """
    return _digest(b"amqp", message_id, str(index))


# --- the v1 layout, only as what the migration drains (pulses/legacy_flush.py) ------

LEGACY_PENDING_WINDOWS = PREFIX + "windows"
LEGACY_PENDING_SNAPSHOTS = PREFIX + "snapshots"
LEGACY_WINDOW_PREFIX = PREFIX + "window:"
LEGACY_SNAPSHOT_PREFIX = PREFIX + "snapshot:"


def legacy_window_key(hour: int) -> str:
    """The v1 live hash of an hour window, e.g. `ingestor:window:2026-11-27T23`."""
    return LEGACY_WINDOW_PREFIX + hour_stamp(hour)


def legacy_window_start_of_key(key: str) -> datetime:
    """The start of the hour a v1 window or snapshot key belongs to."""
    if key.startswith(LEGACY_WINDOW_PREFIX):
        stamp = key[len(LEGACY_WINDOW_PREFIX) :]
    elif key.startswith(LEGACY_SNAPSHOT_PREFIX):
        stamp = key[len(LEGACY_SNAPSHOT_PREFIX) :].split(":", 1)[0]
    else:
        raise ValueError(f"not a v1 window or snapshot key: {key!r}")
    return datetime.strptime(stamp, _HOUR_FORMAT).replace(tzinfo=UTC)


def legacy_new_snapshot_key(window: str) -> tuple[str, uuid.UUID]:
    """A fresh v1 snapshot key for a v1 live window key, and its flush-batch id."""
    batch_id = uuid.uuid4()
    stamp = window[len(LEGACY_WINDOW_PREFIX) :]
    return f"{LEGACY_SNAPSHOT_PREFIX}{stamp}:{batch_id}", batch_id


def legacy_batch_id_of_snapshot(key: str) -> uuid.UUID:
    """The flush-batch id a v1 snapshot key carries."""
    return uuid.UUID(key.rsplit(":", 1)[1])
