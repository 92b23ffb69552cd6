"""Unit tests of the raw queue's batch logic: decoding bodies, dedupe keys, when a batch closes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ingestor.pulses import keys
from ingestor.pulses.ingest import PulseValidator
from ingestor.pulses.raw_consumer import (
    RETRY_BACKOFF_MAX_SECONDS,
    PendingBatch,
    UndecodableBody,
    dead_letter_message,
    decode_body,
    prepare_message,
    rejection_id_of,
)
from ingestor.settings import Settings

LIMIT = 4096
NOW = datetime.now(UTC)
PULSE = {"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": "1.5"}


def prepare(body: bytes | str, message_id: str | None = None, handle: object = "m"):
    return prepare_message(
        handle, body, message_id, validator=PulseValidator(Settings()), max_body_bytes=LIMIT, received_at=NOW
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"tenant": "t"}', [{"tenant": "t"}]),
        (b'[{"tenant": "t"}, 3]', [{"tenant": "t"}, 3]),
        (b"[]", []),
        ('{"tenant": "ação"}', [{"tenant": "ação"}]),
    ],
)
def test_an_object_is_one_pulse_and_an_array_many(body: bytes | str, expected: list) -> None:
    assert decode_body(body, LIMIT) == expected


def test_fractional_numbers_are_decimals() -> None:
    (pulse,) = decode_body(b'{"used_amount": 12345678.123456}', LIMIT)
    assert isinstance(pulse["used_amount"], Decimal)
    assert str(pulse["used_amount"]) == "12345678.123456"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"tenant": "cut',
        b"\xff\xfe",
        b'{"tenant": "\xc3"}',  # truncated UTF-8 sequence
        b"42",
        b"1.5",
        b'"a string"',
        b"null",
        b"true",
        b"[" * 100_000 + b"]" * 100_000,
        b"1" * 5000,  # past Python's limit on digits of an int
    ],
)
def test_bodies_that_are_not_pulses_are_undecodable(body: bytes) -> None:
    with pytest.raises(UndecodableBody):
        decode_body(body, LIMIT)


def test_a_float_encoders_numbers_are_the_decimals_of_their_text() -> None:
    # Go's float64 encoder: shortest round-trip text, exponent form below 1e-6 and from 1e21.
    body = b'[{"used_amount": 4}, {"used_amount": 2.25}, {"used_amount": 0.000001},'
    body += b' {"used_amount": 5e-07}, {"used_amount": 1e+21}, {"used_amount": 1.5E-05}]'
    amounts = [pulse["used_amount"] for pulse in decode_body(body, LIMIT)]
    assert amounts == [
        4,
        Decimal("2.25"),
        Decimal("0.000001"),
        Decimal("5E-7"),
        Decimal("1E+21"),
        Decimal("0.000015"),
    ]
    assert [type(a) for a in amounts] == [int] + [Decimal] * 5
    assert str(amounts[3]) == "5E-7"  # the literal, not a float's neighbour


def test_the_exponent_forms_are_judged_by_the_schema_not_the_decoder() -> None:
    template = b'{"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": %s}'
    assert prepare(template % b"1.5e-05").countable[0].micro_units == 15
    (too_fine,) = prepare(template % b"5e-07").rejections
    assert "fractional digits" in too_fine.errors["used_amount"][0]
    (too_large,) = prepare(template % b"1e+21").rejections
    assert "at most" in too_large.errors["used_amount"][0]


def test_kombu_tagged_objects_are_plain_objects_on_the_raw_queue() -> None:
    # The raw queue's producers know nothing of kombu: {"__type__": ...} is an object
    # like any other (an invalid pulse), not a value for kombu's decoder to rebuild.
    body = b'{"__type__": "decimal", "__value__": "1.5"}'
    assert decode_body(body, LIMIT) == [{"__type__": "decimal", "__value__": "1.5"}]
    assert [r.position for r in prepare(body).rejections] == [0]


def test_a_body_over_the_limit_is_undecodable_unread() -> None:
    assert decode_body(b"[" + b" " * (LIMIT - 2) + b"]", LIMIT) == []
    with pytest.raises(UndecodableBody, match="exceeds"):
        decode_body(b"[" + b" " * (LIMIT - 1) + b"]", LIMIT)
    with pytest.raises(UndecodableBody, match="exceeds"):
        decode_body("[" + "é" * LIMIT + "]", LIMIT)  # counted in bytes, not characters


def test_undecodable_body_is_a_value_error() -> None:
    assert issubclass(UndecodableBody, ValueError)


def test_a_pulse_id_wins_over_the_message_id() -> None:
    prepared = prepare(
        b'{"id": "p-1", "tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": 1}', "m"
    )
    assert [p.v1_key() for p in prepared.countable] == [keys.dedupe_key_for_id("t", "p-1")]


def test_without_ids_the_message_id_and_index_dedupe_across_deliveries() -> None:
    pulse = b'{"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": 1}'
    body = b"[%s, %s]" % (pulse, pulse)
    first, again, other = prepare(body, "m-1"), prepare(body, "m-1"), prepare(body, "m-2")
    first_keys = [p.v1_key() for p in first.countable]
    assert first_keys == [keys.dedupe_key_for_amqp_message("m-1", i) for i in range(2)]
    assert len(set(first_keys)) == 2
    assert [p.v1_key() for p in again.countable] == first_keys
    assert not set(first_keys) & {p.v1_key() for p in other.countable}


def test_message_ids_and_task_ids_never_share_dedupe_keys() -> None:
    assert keys.dedupe_key_for_amqp_message("abc", 0) != keys.dedupe_key_for_position("abc", 0)


@pytest.mark.parametrize("message_id", [None, ""])
def test_without_any_id_every_delivery_gets_fresh_keys(message_id: str | None) -> None:
    body = b'{"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": 1}'
    first, second = prepare(body, message_id), prepare(body, message_id)
    assert first.countable[0].v1_key() != second.countable[0].v1_key()


def test_invalid_pulses_become_rejections_at_their_position() -> None:
    prepared = prepare(
        b'[{"tenant": "t"}, {"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": 1}, 7]'
    )
    assert [r.position for r in prepared.rejections] == [0, 2]
    assert len(prepared.countable) == 1
    assert prepared.pulse_count == 3


def test_a_pulse_without_timestamp_counts_in_the_hour_it_arrived() -> None:
    (pulse,) = prepare(b'{"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": 1}').countable
    assert pulse.window_key == keys.window_key(keys.SHARD_TAGS[0], keys.hour_of(NOW), "t")
    assert pulse.micro_units == 1_000_000


def test_rejection_ids_are_stable_and_never_shared_by_different_messages() -> None:
    body = b'[{"tenant": "t"}]'
    assert rejection_id_of(body, "m-1") == rejection_id_of(body, "m-1")
    assert rejection_id_of(body, "m-1") == rejection_id_of(body.decode(), "m-1")
    ids = {
        rejection_id_of(body, "m-1"),
        rejection_id_of(body, "m-2"),
        rejection_id_of(body, None),
        rejection_id_of(b'[{"tenant": "u"}]', "m-1"),
        rejection_id_of(b'[{"tenant": "u"}]', None),
    }
    assert len(ids) == 5


@pytest.mark.parametrize("message_id", [None, ""])
def test_without_a_message_id_two_identical_messages_keep_rows_of_their_own(message_id: str | None) -> None:
    # The first version's producers send the same pulse text again and again: each
    # rejected one is usage an operator may replay, so none may hide behind another.
    body = b'[{"tenant": "t", "used_amount": 0.30000000000000004}]'
    assert rejection_id_of(body, message_id) != rejection_id_of(body, message_id)
    assert rejection_id_of(body, "m-1").endswith(":m-1")


def test_rejection_ids_fit_the_column_and_show_only_printable_message_ids() -> None:
    assert len(rejection_id_of(b"[]", "x" * 10_000)) <= 255
    assert "\x00" not in rejection_id_of(b"[]", "bad\x00id")
    assert rejection_id_of(b"[]", "bad\x00id") != rejection_id_of(b"[]", None)


def batch_of(
    pulse_counts: list[int], max_pulses: int = 10, wait: float = 1.0, now: float = 100.0
) -> PendingBatch:
    batch: PendingBatch = PendingBatch(max_pulses, wait)
    for index, count in enumerate(pulse_counts):
        body = b"[%s]" % b",".join(
            [b'{"tenant": "t", "product_sku": "s", "use_unity": "u", "used_amount": 1}'] * count
        )
        batch.add(prepare(body, f"m-{index}", handle=index), now)
    return batch


def test_an_empty_batch_is_never_due() -> None:
    assert not PendingBatch(10, 1.0).is_due(1e9)


def test_a_batch_closes_on_size() -> None:
    assert not batch_of([3, 3, 3]).is_due(100.0)
    assert batch_of([3, 3, 3, 1]).is_due(100.0)
    assert batch_of([25]).is_due(100.0)  # one big message overshoots: fine
    assert batch_of([0] * 10).is_due(100.0)  # as many empty arrays as the size


def test_a_batch_closes_after_the_wait_of_its_first_message() -> None:
    batch = batch_of([1], wait=0.5, now=100.0)
    batch.add(batch_of([1], now=100.25).messages[0], 100.25)
    assert not batch.is_due(100.25)
    assert batch.is_due(100.5)


def test_a_failed_batch_waits_a_growing_backoff_even_when_full() -> None:
    batch = batch_of([10])
    delays = [batch.postpone(100.0) for _ in range(10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == RETRY_BACKOFF_MAX_SECONDS
    batch = batch_of([10])
    batch.postpone(100.0)
    assert not batch.is_due(100.4)
    assert batch.is_due(100.5)


def test_a_batch_gives_everything_for_one_count_and_acks_through_its_last_message() -> None:
    batch = batch_of([2, 0, 3])
    assert len(batch.countable()) == 5
    assert batch.last() == 2
    assert batch.pulse_count == 5
    batch.clear()
    assert (len(batch), batch.pulse_count, batch.failures) == (0, 0, 0)
    assert not batch.is_due(1e9)


def test_rejections_are_grouped_by_message() -> None:
    batch: PendingBatch = PendingBatch(10, 1.0)
    batch.add(prepare(b'[{"tenant": "t"}, 1]', "a", handle=0), 0.0)
    batch.add(prepare(b"[]", "b", handle=1), 0.0)
    (only,) = batch.rejections()
    assert only[0] == rejection_id_of(b'[{"tenant": "t"}, 1]', "a")
    assert [r.position for r in only[1]] == [0, 1]


def test_dead_letters_wait_in_the_batch_until_published() -> None:
    batch = batch_of([2])
    batch.add(dead_letter_message(7, "not UTF-8 JSON", "not_json"), 100.0)
    assert [m.handle for m in batch.unpublished_dead_letters] == [7]
    assert batch.last() == 7  # acked only with the batch, after its publish
    assert len(batch.countable()) == 2


def test_a_failed_batch_turns_every_message_into_a_dead_letter_once() -> None:
    batch = batch_of([2, 1])
    batch.add(dead_letter_message(9, "too large", "too_large"), 100.0)
    batch.unpublished_dead_letters.clear()  # that one was published already
    batch.dead_letter_all("its batch failed: boom", "failed")
    assert [m.handle for m in batch.unpublished_dead_letters] == [0, 1]
    assert batch.countable() == [] and batch.rejections() == []
    assert [m.dead_letter for m in batch.messages] == ["its batch failed: boom"] * 2 + ["too large"]
    batch.clear()
    assert batch.unpublished_dead_letters == []
