"""A snapshot (the bucket hashes of one flush batch) read as CSV rows of `pulse_usage`,
in chunks, for COPY.

A snapshot bucket holds, per (tenant, product_sku, use_unity) group, a field `n|<group JSON>`
with its pulse count and a field `a|<group JSON>` with its micro-units (sums past 64
bits spill into `a1|`, `a2|`...). A row is
`"tenant","product_sku","use_unity",<window start>,<units>,<pulse count>`: exactly the
columns COPY writes, amounts already in units, so PostgreSQL only parses.

Two readers give the same rows:
- `server_side_chunks`, the usual one: a Lua script pairs each count with its amount
  and builds the CSV inside Redis, a few thousand fields per call, over as many of
  the batch's bucket keys as that budget allows. Python's share per
  group is nil, so it overlaps PostgreSQL's instead of competing with it for the GIL
  (profiled: pairing 200k fields in Python cost ~0.5 s of a 1.85 s flush of 100k
  groups, most of it while PostgreSQL waited on the GIL). It handles only the plain
  case and says so, with `UnusualSnapshot`, when a snapshot holds anything else:
  spills, unknown fields, an amount without a count.
- `snapshot_chunks`, the careful one: pairs the fields in Python, sums spills with
  exact integers, takes each field once, and raises `CorruptSnapshot` on fields the
  ingest script never writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ingestor.pulses import keys

# A group field as keys.group_field writes it when no value needs escaping: then the
# part between the brackets is already three quoted CSV fields. Anything else (a quote,
# a backslash, a control character in a value) takes the slow, decoding path.
PLAIN_GROUP = re.compile(rb'\["[^"\\\x00-\x1f]*","[^"\\\x00-\x1f]*","[^"\\\x00-\x1f]*"\]')
DIGITS = re.compile(rb"[0-9]+")

# Groups per chunk: a chunk is one COPY, so PostgreSQL writes chunk k while chunk k+1
# is being read.
CHUNK_GROUPS = 10_000
# Fields per HSCAN call (a hint); one server-side call blocks Redis for a few ms.
HSCAN_COUNT = 2000

# KEYS: a run of snapshot keys (buckets of one batch). ARGV: HSCAN cursor in the first
# key, a budget of count fields per call, window start as text.
# Per key: its HLEN when starting it, then HSCAN of only the count fields `n|<group>`,
# their amounts `a|<group>` fetched with HMGET. Stops once the budget is spent (at a key
# boundary, or inside a key too big for it). Returns {keys finished, cursor inside the
# next key, CSV rows, rows, pulses in them, count fields scanned, amounts found beside
# them, fields held by the keys started, slow groups as a flat list of (group, count,
# micro-units or nil)}. A slow group is one whose field or values do not have the plain
# shape (a quote or backslash in a value, a value that is not digits): Python decodes
# those. Pulse counts are summed in Lua: exact below 2^53, far above a call's.
# (Profiled per 100k groups: scanning every field into Lua cost 0.39 s and one HGET
# per group 0.3 s; the MATCH scan and batched HMGET cost 0.36 s together.)
SERVER_SIDE_ROWS_SCRIPT = r"""#!lua
local budget = tonumber(ARGV[2])
local window = ARGV[3]
local plain = '^%["[^"\\%c]*","[^"\\%c]*","[^"\\%c]*"%]$'

local function units(micro)
  local n = #micro
  if n > 6 then return string.sub(micro, 1, n - 6) .. '.' .. string.sub(micro, n - 5) end
  return '0.' .. string.rep('0', 6 - n) .. micro
end

local rows, slow = {}, {}
local pulses, seen, matched, held = 0, 0, 0, 0
local k, cursor = 1, ARGV[1]
while k <= #KEYS and seen < budget do
  local key = KEYS[k]
  if cursor == '0' then held = held + redis.call('HLEN', key) end
  local scan = redis.call('HSCAN', key, cursor, 'MATCH', 'n|*', 'COUNT', budget - seen)
  local fields = scan[2]
  local names = {}
  for i = 1, #fields, 2 do names[#names + 1] = 'a' .. string.sub(fields[i], 2) end
  local amounts = {}
  for first = 1, #names, 1000 do  -- unpack() is limited to a few thousand values
    local part = redis.call('HMGET', key, unpack(names, first, math.min(first + 999, #names)))
    for j = 1, #part do amounts[first + j - 1] = part[j] end
  end
  for j = 1, #names do
    local group, count, micro = string.sub(fields[2 * j - 1], 3), fields[2 * j], amounts[j]
    if micro then matched = matched + 1 end
    if string.find(group, plain) and string.find(count, '^%d+$') and (not micro or string.find(micro, '^%d+$')) then
      rows[#rows + 1] = string.sub(group, 2, -2) .. ',' .. window .. ',' .. units(micro or '0') .. ',' .. count .. '\n'
      pulses = pulses + tonumber(count)
    else
      slow[#slow + 1] = group
      slow[#slow + 1] = count
      slow[#slow + 1] = micro
    end
  end
  seen = seen + #names
  cursor = scan[1]
  if cursor == '0' then k = k + 1 end
end
return {k - 1, cursor, table.concat(rows), #rows, pulses, seen, matched, held, slow}
"""
# Snapshot keys named per call: a batch has 1024 buckets, most of them small.
KEYS_PER_CALL = 128


class CorruptSnapshot(ValueError):
    """A window hash holds fields the ingest script never writes: the flush stops."""


class UnusualSnapshot(Exception):
    """The server-side reader met something only the careful reader handles."""


@dataclass(frozen=True)
class SnapshotChunk:
    """Some groups of a snapshot as CSV rows for COPY, and how many pulses they hold.

    The last chunk of the careful reader also carries `late_amounts`: CSV rows
    (tenant, product_sku, use_unity, units) of spill fields that arrived after their
    group was sent.
    """

    csv: bytes
    groups: int
    pulses: int
    late_amounts: bytes = b""


def units_text(micro_units: int) -> bytes:
    """Micro-units as an exact decimal text of units: 1500000 -> b'1.500000'."""
    return b"%d.%06d" % divmod(micro_units, 1_000_000)


def _csv_fields(group: bytes) -> bytes:
    """tenant, product_sku, use_unity of a group field as three quoted CSV fields.

    A field keys.group_field would not have written, byte for byte, is corruption:
    two spellings of one group would otherwise hit one row twice.
    """
    if PLAIN_GROUP.fullmatch(group):
        try:
            group.decode()
        except UnicodeDecodeError as exc:
            raise CorruptSnapshot(f"group field is not UTF-8: {group[:200]!r}") from exc
        return group[1:-1]
    try:
        values = keys.parse_group_field(group)
        canonical = all(isinstance(value, str) for value in values) and keys.group_field(*values) == group
    except (ValueError, TypeError) as exc:  # not JSON, not three strings
        raise CorruptSnapshot(f"unreadable group field: {group[:200]!r}") from exc
    if not canonical:
        raise CorruptSnapshot(f"group field not as the ingest script writes it: {group[:200]!r}")
    return ",".join('"{}"'.format(value.replace('"', '""')) for value in values).encode()


def _integer(value: bytes | None, what: str, group: bytes) -> int:
    if value is None:
        return 0
    if not DIGITS.fullmatch(value):
        raise CorruptSnapshot(f"{what} is not a non-negative integer: {value[:40]!r} for {group[:200]!r}")
    return int(value)


def _row(group: bytes, window: bytes, count: bytes, micro_units: int) -> bytes:
    if _integer(count, "pulse count", group) == 0:
        raise CorruptSnapshot(f"pulse count of zero for {group[:200]!r}")
    return b"%s,%s,%s,%s\n" % (_csv_fields(group), window, units_text(micro_units), count)


def server_side_chunks(
    read_rows,  # the registered SERVER_SIDE_ROWS_SCRIPT (redis-py Script)
    snapshot_keys: Sequence[str],
    window: bytes,
    chunk_groups: int = CHUNK_GROUPS,
) -> Iterator[SnapshotChunk]:
    """The rows of a snapshot's keys (one batch), built by Redis; `UnusualSnapshot`
    when it cannot vouch for them.

    The check ends the iteration: read every chunk before committing them. It is that
    the keys hold nothing but the count fields scanned and the amounts found beside
    them, so no spill, no stray field, no amount without a count. The rows must also
    go where a group twice is refused (HSCAN may return a field twice): straight into
    pulse_usage, whose unique key refuses it, or into ONE upsert, which refuses to
    touch a row twice. A group is in one key only: its tenant's bucket.
    """
    remaining = list(snapshot_keys)
    cursor: bytes | int = 0
    fields_seen = fields_held = 0
    rows: list[bytes] = []
    groups = pulses = 0
    while remaining:
        finished, cursor, csv, plain_rows, plain_pulses, counts_seen, amounts_seen, held, slow_groups = (
            read_rows(keys=remaining[:KEYS_PER_CALL], args=[cursor, HSCAN_COUNT, window])
        )
        del remaining[:finished]
        fields_seen += counts_seen + amounts_seen
        fields_held += held
        # The script's rows hold no control character, so no newline but their last.
        rows += csv.splitlines(keepends=True)
        groups, pulses = groups + plain_rows, pulses + plain_pulses
        for group, count, micro_units in zip(*[iter(slow_groups)] * 3, strict=True):
            rows.append(_row(group, window, count, _integer(micro_units, "amount", group)))
            groups, pulses = groups + 1, pulses + int(count)
        if groups >= chunk_groups:
            yield SnapshotChunk(_sorted_rows(rows), groups, pulses)
            rows, groups, pulses = [], 0, 0
    if fields_seen != fields_held:
        raise UnusualSnapshot(
            f"{snapshot_keys[0]}...: {fields_held} fields held, {fields_seen} are counts and their amounts"
            " (spills past 64 bits, or corruption)"
        )
    if groups:
        yield SnapshotChunk(_sorted_rows(rows), groups, pulses)


def _sorted_rows(rows: list[bytes]) -> bytes:
    """CSV rows (each ending in its newline), sorted in place, as one CSV text.

    HSCAN hands groups out in hash order; PostgreSQL inserts index entries in key
    order ~30% faster (measured: 100k rows COPied in 10 sorted chunks 1.03 s, unsorted
    1.44 s), and sorting a chunk here costs a few milliseconds.
    """
    rows.sort()
    return b"".join(rows)


def _is_amount(kind: bytes) -> bool:
    # `a`, and the spills `a1`, `a2`... of a sum that outgrew 64 bits.
    return kind == b"a" or (kind[:1] == b"a" and kind[1:].isdigit())


def snapshot_chunks(
    fields: Iterable[tuple[bytes, bytes]], window: bytes, chunk_groups: int = CHUNK_GROUPS
) -> Iterator[SnapshotChunk]:
    """A snapshot's fields, as they stream from HSCAN, paired into per-group CSV chunks.

    A field is `<kind>|<group JSON>`: kind `n` holds the pulse count, `a` (and its
    spills) micro-units. A group is sent once its count and its `a` field are both in;
    a spill arriving after that is summed into `late_amounts`; a group with a count but
    no amount at all is sent, at zero, at the end. Sums are Python ints, exact at any
    size. HSCAN may return a field twice: each is taken once. Any other field (an
    unknown kind, an amount without a count, a value that is not an integer) is
    corruption: the ingest script writes none, so CorruptSnapshot stops the flush, its
    transaction rolls back, and the snapshot stays for an operator.
    """
    seen: set[bytes] = set()
    counts: dict[bytes, bytes] = {}  # count in, amount not yet
    amounts: dict[bytes, int] = {}  # amount(s) in, count not yet
    sent: set[bytes] = set()
    late: dict[bytes, int] = {}
    rows: list[bytes] = []
    pulses = 0

    def send(group: bytes, micro_units: int, count: bytes) -> None:
        nonlocal pulses
        rows.append(_row(group, window, count, micro_units))
        pulses += int(count)
        sent.add(group)

    for name, value in fields:
        if name in seen:
            continue
        seen.add(name)
        kind, _, group = name.partition(b"|")
        if kind == b"n":
            if group in amounts:
                send(group, amounts.pop(group), value)
            else:
                counts[group] = value
        elif not _is_amount(kind):
            raise CorruptSnapshot(f"unexpected field in a window hash: {name[:200]!r}")
        elif group in sent:
            late[group] = late.get(group, 0) + _integer(value, "amount", group)
        elif kind == b"a" and group in counts:
            send(group, amounts.pop(group, 0) + _integer(value, "amount", group), counts.pop(group))
        else:
            amounts[group] = amounts.get(group, 0) + _integer(value, "amount", group)
        if len(rows) == chunk_groups:
            yield SnapshotChunk(_sorted_rows(rows), len(rows), pulses)
            rows, pulses = [], 0
    for group in amounts:
        if group not in counts:
            raise CorruptSnapshot(f"amount without a pulse count in a window hash: {group[:200]!r}")
    for group, count in counts.items():
        send(group, amounts.get(group, 0), count)
    late_rows = b"".join(
        b"%s,%s\n" % (_csv_fields(group), units_text(micro)) for group, micro in late.items()
    )
    yield SnapshotChunk(_sorted_rows(rows), len(rows), pulses, late_rows)
