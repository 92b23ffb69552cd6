"""The API's request and response schemas (marshmallow): validation and documentation."""

from __future__ import annotations

import re
from datetime import UTC
from typing import ClassVar

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

from ingestor.api.query_strings import multi_value
from ingestor.pulses.schema import REASON_CODES, PrintableString
from ingestor.pulses.usage import GROUP_FIELDS
from ingestor.pulses.usage_windows import MAX_RANGE, WINDOW_SIZES

MAX_PAGE_LIMIT = 1000


class JsonInteger(fields.Integer):
    """An integer in a JSON body: 5, not "5", 5.5 or true (marshmallow's would take them)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


class LoginSchema(Schema):
    class Meta:
        unknown = RAISE

    # Printable: a NUL byte cannot even be looked up in PostgreSQL.
    username = PrintableString(64, required=True)
    password = fields.String(required=True, validate=validate.Length(1, 1024), load_only=True)


class TokenSchema(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_at = fields.DateTime(required=True, metadata={"description": "UTC, ISO-8601"})


class QueryDateTime(fields.AwareDateTime):
    """An ISO-8601 datetime in a query string; UTC without an offset.

    In a query string a bare `+` means a space, so `from=...T00:00:00+01:00` arrives as
    `...T00:00:00 01:00`: the error says how to send it.
    """

    _PLUS_SENT_BARE = re.compile(r" [0-9]{2}(:?[0-9]{2})?\Z")

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("default_timezone", UTC)
        super().__init__(format="iso", **kwargs)

    @classmethod
    def bound(cls, name: str, meaning: str) -> QueryDateTime:
        """The `from` or `to` of a half-open range, documented by what it keeps (`meaning`)."""
        return cls(
            data_key=name,
            metadata={"description": f"{meaning} (ISO-8601; no offset means UTC; `+` sent as %2B)"},
        )

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return super()._deserialize(value, attr, data, **kwargs)
        except ValidationError:
            if isinstance(value, str) and self._PLUS_SENT_BARE.search(value):
                encoded = value.replace(" ", "%2B")
                raise ValidationError(
                    "Not a valid datetime: a '+' in a query string arrives as a space; send the offset"
                    f" percent-encoded as %2B ({encoded})."
                ) from None
            raise


class OffsetDateTime(QueryDateTime):
    """A QueryDateTime that must carry its offset: an instant, never a guess."""

    def __init__(self, name: str, meaning: str) -> None:
        super().__init__(
            data_key=name,
            required=True,
            default_timezone=None,
            error_messages={"invalid_awareness": "Needs an offset (Z, or %2B01:00 for +01:00)."},
            metadata={
                "description": f"{meaning} (ISO-8601 with an offset, a whole UTC hour; `+` sent as %2B)"
            },
        )


class CursorQuerySchema(Schema):
    """The page size and keyset cursor every list of the API takes."""

    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=MAX_PAGE_LIMIT))
    cursor = PrintableString(
        200,
        metadata={"description": "next_cursor of a previous page"},
    )


class UsageQuerySchema(CursorQuerySchema):
    """Query string of GET /api/v1/pulses."""

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=10**9))
    cursor = PrintableString(
        200,
        metadata={"description": "next_cursor of a previous page; takes precedence over page"},
    )
    # Repeatable: tenant=a&tenant=b matches either.
    tenant = multi_value(PrintableString(128))
    product_sku = multi_value(PrintableString(128))
    use_unity = multi_value(PrintableString(32))
    window_from = QueryDateTime.bound("from", "window_start >= from")
    window_to = QueryDateTime.bound("to", "window_start < to")


class UsageSchema(Schema):
    """One persisted hourly sum."""

    id = fields.Integer(required=True)
    tenant = fields.String(required=True)
    product_sku = fields.String(required=True)
    use_unity = fields.String(required=True)
    window_start = fields.DateTime(required=True, metadata={"description": "start of the UTC hour"})
    used_amount = fields.Decimal(
        required=True,
        as_string=True,
        metadata={"type": "string", "format": "decimal", "description": "exact, 6 fractional digits"},
    )
    pulse_count = fields.Integer(required=True)
    updated_at = fields.DateTime(required=True)


class UsagePageSchema(Schema):
    items = fields.List(fields.Nested(UsageSchema), required=True)
    page = fields.Integer(allow_none=True, metadata={"description": "null when walking with a cursor"})
    limit = fields.Integer(required=True)
    total = fields.Integer(required=True, metadata={"description": "rows matching the filters"})
    next_cursor = fields.String(allow_none=True, metadata={"description": "null on the last page"})


class UsageReportQuerySchema(Schema):
    """Query string of GET /api/v1/usage."""

    window_from = OffsetDateTime(
        "from", f"the range's start, included; at most {MAX_RANGE.days} days before `to`"
    )
    window_to = OffsetDateTime("to", "the range's end, excluded")
    window_size = fields.String(
        validate=validate.OneOf(WINDOW_SIZES),
        metadata={
            "description": "hour, day or month (local days and months of time_zone); omitted: one total"
        },
    )
    time_zone = fields.String(
        load_default="UTC",
        validate=validate.Length(1, 64),
        metadata={
            "description": "IANA zone where days and months begin (default UTC); one whose offset is"
            " not a whole number of hours is refused for day and month windows"
        },
    )
    group_by = multi_value(
        fields.String(validate=validate.OneOf(GROUP_FIELDS)),
        "a field to group by: " + ", ".join(GROUP_FIELDS),
    )
    tenant = multi_value(PrintableString(128))
    product_sku = multi_value(PrintableString(128))
    use_unity = multi_value(PrintableString(32))
    include_pending = fields.Boolean(
        load_default=True,
        metadata={
            "description": "add the usage not persisted yet (in Redis): current to the last counted pulse"
        },
    )
    format = fields.String(
        validate=validate.OneOf(("json", "csv")),
        metadata={
            "description": "csv: the same rows as streamed CSV (as `Accept: text/csv`); json by default"
        },
    )


class UsageReportRowSchema(Schema):
    """Usage of one window and group: only the fields grouped by are present."""

    window_start = fields.String(
        required=True, metadata={"format": "date-time", "description": "in time_zone's offset"}
    )
    window_end = fields.String(required=True, metadata={"format": "date-time", "description": "excluded"})
    tenant = fields.String(metadata={"description": "when grouped by tenant"})
    product_sku = fields.String(metadata={"description": "when grouped by product_sku"})
    use_unity = fields.String(metadata={"description": "when grouped by use_unity"})
    used_amount = fields.String(
        required=True, metadata={"format": "decimal", "description": "exact, 6 fractional digits"}
    )
    pulse_count = fields.Integer(required=True)


class UsageReportSchema(Schema):
    window_from = fields.String(data_key="from", required=True, metadata={"format": "date-time"})
    window_to = fields.String(data_key="to", required=True, metadata={"format": "date-time"})
    window_size = fields.String(required=True, allow_none=True, metadata={"description": "null: one total"})
    time_zone = fields.String(required=True)
    rows = fields.List(
        fields.Nested(UsageReportRowSchema),
        required=True,
        metadata={
            "description": "by window_start, then the group fields in byte order; windows without usage have no row"
        },
    )


class RejectedQuerySchema(CursorQuerySchema):
    """Query string of GET /api/v1/rejected-pulses."""

    tenant = multi_value(PrintableString(128))
    source = multi_value(
        PrintableString(64),
        "the path it came by: ingestor.ingest_pulses, ingestor.ingest_pulse or raw:<queue>",
    )
    reason = multi_value(
        fields.String(validate=validate.OneOf(REASON_CODES)),
        "a reason code, on any field: " + ", ".join(REASON_CODES),
    )
    received_from = QueryDateTime.bound("from", "received_at >= from")
    received_to = QueryDateTime.bound("to", "received_at < to")


class RejectedPulseSchema(Schema):
    """One quarantined pulse, with what was wrong with it."""

    id = fields.Integer(required=True)
    received_at = fields.DateTime(required=True)
    source = fields.String(required=True, metadata={"description": "the task name, or raw:<queue>"})
    message_id = fields.String(required=True)
    position = fields.Integer(required=True, metadata={"description": "index of the pulse in its message"})
    tenant = fields.String(
        required=True, allow_none=True, metadata={"description": "null when it was not a valid tenant"}
    )
    payload = fields.Raw(
        required=True,
        metadata={
            "description": "the pulse as sent (fractional numbers as decimal strings); when it was"
            " cut on storing (payload_truncated), the stored text as a string"
        },
    )
    payload_truncated = fields.Boolean(required=True)
    errors = fields.Dict(keys=fields.String(), required=True, metadata={"description": "messages per field"})
    reasons = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        required=True,
        metadata={"description": "reason codes per field (the `reason` filter's values)"},
    )


class RejectedPageSchema(Schema):
    items = fields.List(fields.Nested(RejectedPulseSchema), required=True)
    limit = fields.Integer(required=True)
    next_cursor = fields.String(allow_none=True, metadata={"description": "null on the last page"})


class PulseRejectionSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "position in the request body"})
    errors = fields.Dict(required=True, metadata={"description": "reasons per field"})


class IngestResultSchema(Schema):
    accepted = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(PulseRejectionSchema), required=True)
    task_id = fields.String(required=True, metadata={"description": "the ingest task"})


class PopulateRequestSchema(Schema):
    """Body of POST /api/v1/pulses/populate; a missing, zero or negative value means the default."""

    class Meta:
        unknown = RAISE

    total_messages = JsonInteger(load_default=100, validate=validate.Range(1, 10_000_000))
    workers_number = JsonInteger(load_default=5, validate=validate.Range(1, 50))
    buffer_size = JsonInteger(load_default=50, validate=validate.Range(1, 1000))

    DEFAULTS: ClassVar[dict[str, int]] = {"total_messages": 100, "workers_number": 5, "buffer_size": 50}

    @pre_load
    def _defaults_for_non_positive(self, data, **_):
        # The first version's rule, kept for its users: <= 0 means "use the default".
        if isinstance(data, dict):
            data = dict(data)
            for name, default in self.DEFAULTS.items():
                value = data.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
                    data[name] = default
        return data


class PopulateJobSchema(Schema):
    job_id = fields.String(required=True)
    total = fields.Integer(required=True)
    published = fields.Integer(required=True)
    done = fields.Boolean(required=True)
    workers = fields.Integer(required=True)
    buffer_size = fields.Integer(required=True)
    created_at = fields.String(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True)
    # Service name -> "ok", or its state when not ok ("unavailable", "out of memory").
    services = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
