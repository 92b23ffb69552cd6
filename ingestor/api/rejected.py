"""/api/v1/rejected-pulses: the quarantine, so a producer sees what it got wrong.

Pulses a worker rejected (from a Celery task or the raw queue) are kept in
`rejected_pulse` with their reasons; this lists them newest first, filtered, by
keyset cursor. (POST /api/v1/pulses answers its invalid pulses at once and enqueues
only the valid ones: those never reach the quarantine.)
"""

from __future__ import annotations

from flask_smorest import abort

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.schemas import RejectedPageSchema, RejectedQuerySchema
from ingestor.database import get_database
from ingestor.pulses.keyset import InvalidCursor
from ingestor.pulses.quarantine import RejectedFilter, list_rejected

blueprint = ApiBlueprint(
    "rejected_pulses",
    __name__,
    url_prefix="/api/v1/rejected-pulses",
    description="The quarantine: pulses rejected by the workers, with the reasons per field",
)
blueprint.require_token()


@blueprint.get("")
@blueprint.arguments(RejectedQuerySchema, location="query")
@blueprint.response(200, RejectedPageSchema)
@blueprint.errors(400, 401, 503)
def list_rejected_pulses(query: dict):
    """List rejected pulses, newest first; walk further pages with `cursor`."""
    rejected_filter = RejectedFilter(
        tenant=tuple(query.get("tenant", ())),
        source=tuple(query.get("source", ())),
        reason=tuple(query.get("reason", ())),
        received_from=query.get("received_from"),
        received_to=query.get("received_to"),
    )
    with get_database().session() as session:
        try:
            items, next_cursor = list_rejected(session, rejected_filter, query["limit"], query.get("cursor"))
        except InvalidCursor as exc:
            abort(400, message=str(exc), messages={"cursor": [str(exc)]})
    return {"items": items, "limit": query["limit"], "next_cursor": next_cursor}
