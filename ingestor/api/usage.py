"""/api/v1/usage: usage over a range by window and group, persisted and pending, JSON or CSV.

Everything that can refuse the request (parameters, Redis, the first SQL rows) runs
before the first byte is sent, so it is an ordinary 400 or 503. A CSV is then streamed
row by row from the server-side cursor, with the transaction (and its snapshot) open
until the last row. A failure after that cannot become an error status: the stream
stops without the CSV's final line end and the connection is dropped without the
chunked encoding's last chunk, so no client takes it for a whole file.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import chain, islice
from zoneinfo import ZoneInfo

from flask import Response, request, stream_with_context
from flask_smorest import abort

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.errors import REDIS
from ingestor.api.schemas import UsageReportQuerySchema, UsageReportSchema
from ingestor.database import get_database
from ingestor.pulses.pending import PendingUnavailable
from ingestor.pulses.usage import GROUP_FIELDS, UsageQuery, UsageRow, query_usage
from ingestor.pulses.usage_windows import WindowsRefused, time_zone_of
from ingestor.redis_store import get_redis

logger = logging.getLogger(__name__)

blueprint = ApiBlueprint(
    "usage",
    __name__,
    url_prefix="/api/v1/usage",
    description="Usage over a range, by hour, day or month in a time zone, grouped and filtered",
)
blueprint.require_token()

# Rows a JSON answer holds at most (it is built whole); past it, CSV streams any number.
MAX_JSON_ROWS = 100_000
CSV_TYPE = "text/csv"
# Rows per streamed chunk of a CSV answer: memory stays bounded, writes few.
CSV_CHUNK_ROWS = 500
# A CSV line ends with CRLF (RFC 4180); the end of a row is written before the next one,
# so the file's last line end is written only once the last row is known to be complete.
LINE_END = "\r\n"
# A text cell starting with one of these is read by a spreadsheet as a formula (or, for
# tab and CR, lets one through after the separator): it gets a leading "'" (OWASP's
# CSV injection advice). "'" itself is in the list so that the rule is reversible: a
# reader drops one leading "'" from a text cell and has the value back, whatever it was.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")

CSV_RESPONSE = {
    "responses": {
        "200": {
            "description": "The rows, as JSON (default) or as CSV with a header row",
            "content": {
                # Named again: this documentation replaces the response's content whole.
                "application/json": {"schema": {"$ref": "#/components/schemas/UsageReport"}},
                CSV_TYPE: {
                    "schema": {"type": "string"},
                    "example": "window_start,window_end,tenant,used_amount,pulse_count\r\n"
                    "2026-11-01T00:00:00+01:00,2026-11-02T00:00:00+01:00,acme,12.500000,3\r\n",
                },
            },
        }
    }
}


@blueprint.get("")
@blueprint.arguments(UsageReportQuerySchema, location="query")
@blueprint.response(200, UsageReportSchema)
@blueprint.doc(**CSV_RESPONSE)
@blueprint.errors(400, 401, 503)
def get_usage_report(arguments: dict):
    """Usage of [from, to) per window and group; `Accept: text/csv` or `format=csv` streams CSV."""
    query = UsageQuery(
        window_from=arguments["window_from"],
        window_to=arguments["window_to"],
        window_size=arguments.get("window_size"),
        time_zone=arguments["time_zone"],
        group_by=tuple(name for name in GROUP_FIELDS if name in arguments.get("group_by", ())),
        tenant=tuple(arguments.get("tenant", ())),
        product_sku=tuple(arguments.get("product_sku", ())),
        use_unity=tuple(arguments.get("use_unity", ())),
        include_pending=arguments["include_pending"],
    )
    wants_csv = _wants_csv(arguments.get("format"))
    resources = ExitStack()
    try:
        session = resources.enter_context(get_database().session())
        # A JSON answer is built whole: its stored rows are read at once, one more than
        # it may hold, so that a larger answer is refused without reading it all.
        limit = None if wants_csv else MAX_JSON_ROWS + 1
        rows = _started(query_usage(session, get_redis(), query, stored_rows_limit=limit))
        if wants_csv:
            response = Response(stream_with_context(_csv_lines(rows, query)), mimetype=CSV_TYPE)
            response.headers["Content-Disposition"] = 'attachment; filename="usage.csv"'
            # The session (its transaction, the cursor) lives until the last row is sent.
            response.call_on_close(resources.close)
            resources = ExitStack()  # handed over: not closed here
            return response
        kept = list(islice(rows, MAX_JSON_ROWS + 1))
    except WindowsRefused as exc:
        message = f"Invalid query parameter '{exc.parameter}': {exc}"
        abort(400, message=message, messages={"query": {exc.parameter: [str(exc)]}})
    except PendingUnavailable as exc:
        abort(
            503,
            message=f"Usage not persisted yet cannot be read exactly right now: {exc}; retry in"
            f" {exc.retry_after_seconds} s, or ask with include_pending=false.",
            messages={"service": REDIS},
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )
    finally:
        resources.close()
    if len(kept) > MAX_JSON_ROWS:
        abort(
            400,
            message=f"The answer has more than {MAX_JSON_ROWS} rows, more than a JSON answer holds:"
            " ask for CSV (Accept: text/csv or format=csv), which streams any number, or narrow the query.",
        )
    zone = time_zone_of(query.time_zone)
    return {
        "window_from": query.window_from.astimezone(zone).isoformat(),
        "window_to": query.window_to.astimezone(zone).isoformat(),
        "window_size": query.window_size,
        "time_zone": query.time_zone,
        "rows": [_row_fields(row, zone, query.group_by) for row in kept],
    }


def _wants_csv(format_asked: str | None) -> bool:
    if format_asked is not None:
        return format_asked == "csv"
    return request.accept_mimetypes.best_match(["application/json", CSV_TYPE]) == CSV_TYPE


def _started(rows: Iterator[UsageRow]) -> Iterator[UsageRow]:
    """`rows` with its first row read now: the pending read and the SQL query run (and
    fail, if they do) before the answer starts."""
    first = next(rows, None)
    return rows if first is None else chain([first], rows)


def _row_fields(row: UsageRow, zone: ZoneInfo, group_by: tuple[str, ...]) -> dict[str, object]:
    """A row as the API answers it: bounds in the zone's offset, the grouped fields, the
    amount as its exact decimal string."""
    fields: dict[str, object] = {
        "window_start": row.window_start.astimezone(zone).isoformat(),
        "window_end": row.window_end.astimezone(zone).isoformat(),
    }
    for name in GROUP_FIELDS:
        if name in group_by:
            fields[name] = getattr(row, name)
    fields["used_amount"] = str(row.used_amount)
    fields["pulse_count"] = row.pulse_count
    return fields


def spreadsheet_safe(text: str) -> str:
    """`text` as a CSV text cell no spreadsheet runs: prefixed with "'" when it starts with
    a formula character (FORMULA_STARTS), else unchanged.

    For the user-given text cells only (tenant, product_sku, use_unity): the numbers
    (amounts, counts) and the window bounds the API writes itself are never changed, so a
    negative amount such as "-5.000000" stays a number.
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_fields(row: UsageRow, zone: ZoneInfo, group_by: tuple[str, ...]) -> dict[str, object]:
    """A row's CSV cells: the JSON row's fields, its text fields made spreadsheet-safe."""
    fields = _row_fields(row, zone, group_by)
    for name in group_by:
        fields[name] = spreadsheet_safe(str(fields[name]))
    return fields


def _csv_lines(rows: Iterator[UsageRow], query: UsageQuery) -> Iterator[str]:
    """The CSV: a header, then one line per row; the last line end only after the last row."""
    zone = time_zone_of(query.time_zone)
    columns = ["window_start", "window_end", *(n for n in GROUP_FIELDS if n in query.group_by)]
    columns += ["used_amount", "pulse_count"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator=LINE_END)

    def line(fields: dict[str, object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(fields)
        return buffer.getvalue()[: -len(LINE_END)]

    yield line(dict(zip(columns, columns, strict=True)))
    try:
        # Lines go out CSV_CHUNK_ROWS at a time: one chunk (a write by the server) per
        # row made 10,000 rows cost 0.5 s more than the same JSON answer.
        chunk: list[str] = []
        for row in rows:
            chunk.append(LINE_END + line(_csv_fields(row, zone, query.group_by)))
            if len(chunk) == CSV_CHUNK_ROWS:
                yield "".join(chunk)
                chunk = []
        if chunk:  # an empty chunk would read as the end of a chunked body
            yield "".join(chunk)
    except Exception:
        # Headers are sent: no status can say it. Raising makes the server drop the
        # connection without the last chunk, and the file lacks its final line end.
        logger.exception("usage CSV broken off after it started")
        raise
    yield LINE_END
