"""GET /api/v1/rejected-pulses: the quarantine as a producer reads it.

Rows are rejected by the real paths (a Celery task and the raw queue through a real
worker, or the workers' own `ingest_batch` for the many-row cases), then read
through the API: reasons per field, filters, a cursor walk with no duplicate or gap
while new rejections arrive, and the refusals.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text

from ingestor.database import upgrade_schema
from ingestor.messaging.topology import RAW_PULSES
from ingestor.pulses.ingest import ingest_batch
from ingestor.pulses.rejections import MAX_PAYLOAD_CHARS, Rejection, record_rejections
from ingestor.pulses.schema import REASON_CODES, reasons_per_field, rejection_codes
from ingestor.pulses.task_names import INGEST_PULSES
from tests.support.pulses import MISSING, pulse
from tests.support.raw import body_of, publish_raw
from tests.support.services import recreate_database
from tests.support.worker import wait_until_idle, wait_until_settled

URL = "/api/v1/rejected-pulses"
BASE = datetime(2026, 11, 20, tzinfo=UTC)
TASK_SOURCE = INGEST_PULSES
RAW_SOURCE = f"raw:{RAW_PULSES}"


def walk(client, auth, query: str = "", limit: int = 7, cursor: str | None = None) -> list[dict]:
    """Every item the cursor walk gives for `query` (from `cursor`, else the first page), in order."""
    items, url = [], f"{URL}?limit={limit}&{query}" + (f"&cursor={cursor}" if cursor else "")
    while True:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["limit"] == limit and len(body["items"]) <= limit
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        url = f"{URL}?limit={limit}&{query}&cursor={body['next_cursor']}"


def codes_of(reasons: dict[str, list[str]]) -> set[str]:
    """Every reason code of one rejection, whatever its field."""
    return {code for codes in reasons.values() for code in codes}


def iso(moment: datetime) -> str:
    """`moment` for a query string: ISO-8601, its offset's `+` percent-encoded."""
    return moment.isoformat().replace("+", "%2B")


def reject(app, pulses: list, *, source: str = TASK_SOURCE) -> None:
    """Reject (and count) `pulses` with the workers' own code, as one message."""
    services = app.extensions["pulses"]
    ingest_batch(
        pulses,
        message_id=str(uuid.uuid4()),
        source=source,
        validator=services.validator,
        counter=services.counter,
        database=app.extensions["database"],
    )


def spread_in_time(database, hours_per_row: float = 1 / 3) -> None:
    """received_at = BASE + id * `hours_per_row`, so rows share hours and times order them."""
    with database.engine.begin() as connection:
        connection.execute(
            text("UPDATE rejected_pulse SET received_at = :base + floor(id * :h) * interval '1 hour'"),
            {"base": BASE, "h": hours_per_row},
        )


def all_rows(database) -> list[dict]:
    with database.engine.connect() as connection:
        return [
            dict(row._mapping)
            for row in connection.execute(
                text("SELECT * FROM rejected_pulse ORDER BY received_at DESC, id DESC")
            )
        ]


@pytest.mark.usefixtures("clean_state")
def test_rejections_from_a_task_and_the_raw_queue_are_listed_with_reasons_per_field(
    client, auth, producer, worker, settings
):
    stamp = datetime.now(UTC)
    task_batch = [
        pulse(id="ok-1", timestamp=stamp),
        pulse(tenant="acme", used_amount="-1"),
        pulse(tenant=MISSING, used_amount="1.0000001", use_unity="x" * 33),
    ]
    producer.send_task(INGEST_PULSES, args=[task_batch], exchange="pulses", routing_key="pulses")
    wait_until_idle(producer, worker, ("pulses",))
    raw_batch = [pulse(tenant="globex", used_amount=5e-07), pulse(tenant="globex"), "not a pulse"]
    publish_raw(settings.broker_url, [(body_of(raw_batch), "raw-batch-1")])
    wait_until_settled(worker, RAW_PULSES)
    # The API answers its invalid pulses at once and enqueues only the valid ones.
    posted = client.post(
        URL.replace("rejected-pulses", "pulses"), json=[pulse(), pulse(used_amount="x")], headers=auth
    )
    assert posted.status_code == 202 and len(posted.get_json()["rejected"]) == 1
    wait_until_idle(producer, worker, ("pulses",))

    response = client.get(URL, headers=auth)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["next_cursor"] is None and body["limit"] == 10
    items = {(item["source"], item["position"]): item for item in body["items"]}
    assert set(items) == {(TASK_SOURCE, 1), (TASK_SOURCE, 2), (RAW_SOURCE, 0), (RAW_SOURCE, 2)}
    negative = items[(TASK_SOURCE, 1)]
    assert negative["tenant"] == "acme"
    assert negative["errors"] == {"used_amount": ["Must not be negative."]}
    assert negative["reasons"] == {"used_amount": ["negative"]}
    assert negative["payload"] == task_batch[1] and negative["payload_truncated"] is False
    several = items[(TASK_SOURCE, 2)]
    assert several["tenant"] is None
    assert several["reasons"] == {
        "tenant": ["missing"],
        "used_amount": ["fraction_digits"],
        "use_unity": ["length"],
    }
    assert set(several["errors"]) == set(several["reasons"])
    too_fine = items[(RAW_SOURCE, 0)]
    # The float encoder's number, exactly as its text: never through a binary float.
    assert too_fine["payload"]["used_amount"] == "5E-7"
    assert too_fine["reasons"] == {"used_amount": ["fraction_digits"]}
    assert "raw-batch-1" in too_fine["message_id"]
    assert items[(RAW_SOURCE, 2)]["payload"] == "not a pulse"
    assert items[(RAW_SOURCE, 2)]["reasons"] == {"_schema": ["type"]}
    for item in body["items"]:
        assert set(item) == {
            "id",
            "received_at",
            "source",
            "message_id",
            "position",
            "tenant",
            "payload",
            "payload_truncated",
            "errors",
            "reasons",
        }
    # Filtered by the path it came by.
    raw_only = client.get(f"{URL}?source={RAW_SOURCE}", headers=auth).get_json()["items"]
    assert {item["source"] for item in raw_only} == {RAW_SOURCE} and len(raw_only) == 2


@pytest.fixture
def many_rejections(app, database, clean_state) -> list[dict]:
    """250 rejections over 3 tenants, 2 sources and every reason code but `invalid`, 3 per hour."""
    invalid = [
        {"used_amount": "-1"},
        {"used_amount": "0.0000001"},
        {"tenant": MISSING},
        {"product_sku": ""},
        {"timestamp": "yesterday"},
        {"used_amount": "1e30", "use_unity": None},
        {"used_amount": "abc", "product_sku": "sku\x07bell"},
        {"used_amount": Decimal("Infinity")},
        {"used_amount": [1]},
        {"timestamp": "2026-11-20T00:00:00"},
        {"timestamp": "2000-01-01T00:00:00+00:00"},
        {"timestamp": "2100-01-01T00:00:00+00:00"},
    ]
    for n in range(250):
        tenant = ["acme", "globex:eu", "initech ☕"][n % 3]
        overrides = {"tenant": tenant, **invalid[n % len(invalid)]}
        reject(app, [pulse(**overrides)], source=RAW_SOURCE if n % 4 == 0 else TASK_SOURCE)
    spread_in_time(database)
    return all_rows(database)


def test_the_cursor_walk_gives_every_row_once_newest_first(client, auth, many_rejections):
    items = walk(client, auth)

    assert [item["id"] for item in items] == [row["id"] for row in many_rejections]
    assert len({item["id"] for item in items}) == 250
    stamps = [(datetime.fromisoformat(item["received_at"]), item["id"]) for item in items]
    assert stamps == sorted(stamps, reverse=True)


def test_rejections_arriving_during_a_walk_neither_repeat_nor_hide_a_row(app, client, auth, many_rejections):
    first = client.get(f"{URL}?limit=50", headers=auth).get_json()
    # Newer than the walk's start, as new rejections are: the walk goes on below them.
    reject(app, [pulse(used_amount="-2") for _ in range(20)])

    rest = walk(client, auth, limit=50, cursor=first["next_cursor"])

    walked = [item["id"] for item in first["items"] + rest]
    assert walked == [row["id"] for row in many_rejections]


def test_filters_combine_and_repeat(client, auth, many_rejections):
    frm, to = BASE + timedelta(hours=10), BASE + timedelta(hours=40)
    query = (
        "tenant=acme&tenant=initech+%E2%98%95&source=" + TASK_SOURCE + "&reason=length&reason=null"
        f"&from={iso(frm)}&to={iso(to)}"
    )

    items = walk(client, auth, query, limit=5)

    expected = [
        row["id"]
        for row in many_rejections
        if row["tenant"] in ("acme", "initech ☕")
        and row["source"] == TASK_SOURCE
        and {"length", "null"} & codes_of(reasons_per_field(row["errors"]))
        and frm <= row["received_at"] < to
    ]
    assert [item["id"] for item in items] == expected
    assert expected  # the filter selects something, and not everything
    assert len(expected) < len(many_rejections)


def test_from_is_inclusive_and_to_exclusive(client, auth, many_rejections):
    hour = BASE + timedelta(hours=5)
    query = f"from={iso(hour)}&to={iso(hour + timedelta(hours=1))}"

    items = walk(client, auth, query)

    assert [item["id"] for item in items] == [
        row["id"] for row in many_rejections if row["received_at"] == hour
    ]
    assert len(items) == 3


@pytest.mark.parametrize("code", REASON_CODES)
def test_each_reason_code_finds_exactly_the_rows_that_show_it(app, client, auth, many_rejections, code):
    # Messages no code reads, and a field whose messages are not a list: `invalid`.
    record_rejections(
        app.extensions["database"],
        source="test",
        message_id="odd-messages",
        rejections=[
            Rejection(0, {"tenant": "acme"}, {"tenant": ["Something nobody wrote a code for."]}),
            Rejection(1, {"tenant": "acme"}, {"nested": {"0": ["Must not be negative."]}}),
        ],
    )

    items = walk(client, auth, f"reason={code}", limit=100)

    assert all(code in codes_of(item["reasons"]) for item in items)
    with app.extensions["database"].engine.connect() as connection:
        every = connection.execute(text("SELECT id, errors FROM rejected_pulse")).all()
    expected = {row.id for row in every if code in codes_of(reasons_per_field(row.errors))}
    assert {item["id"] for item in items} == expected
    assert 0 < len(expected) < len(every)


def test_a_payload_cut_on_storing_comes_back_as_its_text_and_null_as_null(app, client, auth, clean_state):
    reject(app, [pulse(tenant="acme", used_amount="-1", note="x" * (2 * MAX_PAYLOAD_CHARS))])
    reject(app, [pulse(tenant="acme", product_sku="nul\x00byte", used_amount="-1")])
    reject(app, [None])

    items = client.get(URL, headers=auth).get_json()["items"]

    null, nul, cut = items
    assert null["payload"] is None and null["payload_truncated"] is False
    assert null["reasons"] == {"_schema": ["type"]}
    assert cut["payload_truncated"] is True
    assert isinstance(cut["payload"], str) and cut["payload"].endswith("...(truncated)")
    assert cut["reasons"] == {"used_amount": ["negative"]}
    assert nul["payload_truncated"] is False and nul["payload"]["product_sku"] == "nul\x00byte"


def test_without_a_token_it_is_401(client, many_rejections):
    response = client.get(URL)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("from=2026-11-01T00:00:00+01:00", "from"),  # the bare '+' arrived as a space
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WyJ4IiwgMV0", "cursor"),  # base64 of ["x", 1]
        ("tenant=" + "a" * 129, "tenant"),
        ("tenant=%00", "tenant"),
        ("source=" + "s" * 65, "source"),
        ("reason=negativ", "reason"),
        ("tennant=acme", "tennant"),
        ("page=2", "page"),
        ("limit=5&limit=6", "limit"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter_and_change_nothing(
    client, auth, many_rejections, database, query, parameter
):
    response = client.get(f"{URL}?{query}", headers=auth)

    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "bad_request"
    assert parameter in error["message"] and parameter in str(error["details"]), error
    assert len(all_rows(database)) == len(many_rejections)


def test_the_bare_plus_gets_the_percent_encoding_hint(client, auth, many_rejections):
    error = client.get(f"{URL}?from=2026-11-01T00:00:00+01:00", headers=auth).get_json()["error"]

    assert "%2B" in error["message"]


def test_a_reason_refused_lists_the_codes(client, auth, many_rejections):
    error = client.get(f"{URL}?reason=negativ", headers=auth).get_json()["error"]

    assert "fraction_digits" in str(error["details"])


def test_rows_quarantined_before_the_reason_codes_column_get_theirs(fresh_database_url):
    """Revision 0004 fills `reason_codes` of the rows already there, as new rows get them."""
    old = fresh_database_url
    recreate_database(old)
    upgrade_schema(old, "0003")
    errors = [
        '{"used_amount": ["Must not be negative."], "tenant": ["Missing data for required field."]}',
        '{"_schema": ["Invalid input type."]}',
        '{"odd": {"0": ["not a list"]}}',
        "{}",
    ]
    engine = create_engine(old)
    try:
        with engine.begin() as connection:
            for n, value in enumerate(errors * 3):
                connection.execute(
                    text(
                        "INSERT INTO rejected_pulse (source, message_id, position, payload, errors)"
                        " VALUES ('test', 'before-0004', :n, '{}', CAST(:errors AS jsonb))"
                    ),
                    {"n": n, "errors": value},
                )

        upgrade_schema(old)

        with engine.connect() as connection:
            rows = connection.execute(text("SELECT errors, reason_codes FROM rejected_pulse")).all()
        assert len(rows) == 12
        assert all(row.reason_codes == rejection_codes(row.errors) for row in rows)
        assert {tuple(row.reason_codes) for row in rows} == {
            ("missing", "negative"),
            ("type",),
            ("invalid",),
            (),
        }
    finally:
        engine.dispose()
