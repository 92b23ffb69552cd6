"""/api/v1/pulses: query the hourly sums, ingest pulses over HTTP, populate fake load."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.errors import RABBITMQ, ServiceUnavailable
from ingestor.api.parsing import BodyError, decode_json
from ingestor.api.schemas import (
    IngestResultSchema,
    PopulateJobSchema,
    PopulateRequestSchema,
    UsagePageSchema,
    UsageQuerySchema,
    UsageSchema,
)
from ingestor.database import get_database
from ingestor.messaging import topology
from ingestor.observability import metrics
from ingestor.pulses import get_pulses, populate
from ingestor.pulses.keyset import InvalidCursor
from ingestor.pulses.publishing import BrokerUnavailable, configured_queue, publish_pulse_batch, publish_task
from ingestor.pulses.queries import UsageFilter, get_usage, list_usage
from ingestor.pulses.task_names import POPULATE_PULSES
from ingestor.redis_store import get_redis
from ingestor.settings import get_settings

blueprint = ApiBlueprint(
    "pulses", __name__, url_prefix="/api/v1/pulses", description="Pulses and their hourly sums"
)
blueprint.require_token()

MAX_ROW_ID = 2**63 - 1

PULSE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Pulse"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/Pulse"}, "minItems": 1},
                ]
            }
        }
    },
}


@blueprint.route("")
class Pulses(MethodView):
    @blueprint.arguments(UsageQuerySchema, location="query")
    @blueprint.response(200, UsagePageSchema)
    @blueprint.errors(400, 401, 503)
    def get(self, query: dict):
        """List hourly sums, newest hour first: by `page`, or by `cursor` at any depth."""
        usage_filter = UsageFilter(
            tenant=tuple(query.get("tenant", ())),
            product_sku=tuple(query.get("product_sku", ())),
            use_unity=tuple(query.get("use_unity", ())),
            window_from=query.get("window_from"),
            window_to=query.get("window_to"),
        )
        cursor = query.get("cursor")
        with get_database().session() as session:
            try:
                page = list_usage(
                    session, usage_filter, query["limit"], query["page"], cursor, get_pulses().totals
                )
            except InvalidCursor as exc:
                abort(400, message=str(exc), messages={"cursor": [str(exc)]})
        return {
            "items": page.items,
            "page": None if cursor else query["page"],
            "limit": query["limit"],
            "total": page.total,
            "next_cursor": page.next_cursor,
        }

    @blueprint.response(202, IngestResultSchema)
    @blueprint.errors(400, 401, 411, 413, 415, 422, 503)
    @blueprint.doc(requestBody=PULSE_BODY)
    def post(self):
        """Ingest one pulse or a list: the valid ones are enqueued as one task, the rest answered."""
        if not request.is_json:
            abort(415, message="Send pulses as application/json.")
        try:
            body = decode_json(request.get_data())
        except BodyError as exc:
            abort(400, message=str(exc))
        pulses = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
        if not pulses:
            abort(400, message="The body must be a pulse object or a non-empty array of pulses.")
        limit = get_settings().max_pulses_per_request
        if len(pulses) > limit:
            abort(400, message=f"At most {limit} pulses per request, got {len(pulses)}.")
        accepted, rejected = get_pulses().validator.for_enqueue(pulses, datetime.now(UTC))
        reasons = [{"index": r.position, "errors": r.errors} for r in rejected]
        if not accepted:
            metrics.record_http_pulses(0, (r.reasons for r in rejected))
            # Nothing to enqueue: not a success, whatever the body's shape.
            abort(
                422,
                message=(
                    ("The pulse is not" if len(pulses) == 1 else f"None of the {len(pulses)} pulses is")
                    + " valid, so nothing was accepted; see details for the reasons."
                ),
                messages={"accepted": 0, "rejected": reasons},
            )
        try:
            task_id = publish_pulse_batch(current_app.extensions["celery"], accepted)
        except BrokerUnavailable as exc:
            raise ServiceUnavailable(RABBITMQ, "Nothing was accepted; pulses with an id count once.") from exc
        metrics.record_http_pulses(len(accepted), (r.reasons for r in rejected))
        return {"accepted": len(accepted), "rejected": reasons, "task_id": task_id}


@blueprint.get("/<int:usage_id>")
@blueprint.response(200, UsageSchema)
@blueprint.errors(401, 404, 503)
def get_one(usage_id: int):
    """One hourly sum by id."""
    usage = None
    if usage_id <= MAX_ROW_ID:
        with get_database().session() as session:
            usage = get_usage(session, usage_id)
    if usage is None:
        abort(404, message=f"No hourly sum with id {usage_id}.")
    return usage


@blueprint.post("/populate")
@blueprint.arguments(PopulateRequestSchema)
@blueprint.response(202, PopulateJobSchema)
@blueprint.errors(400, 401, 411, 413, 503)
def start_populate(job: dict):
    """Generate fake pulses with `workers_number` Celery tasks, in batches of `buffer_size`."""
    shares = [n for n in populate.split_evenly(job["total_messages"], job["workers_number"]) if n]
    # A Redis or RabbitMQ outage is answered 503 by ingestor.api.errors.
    job_id = populate.create_job(get_redis(), job["total_messages"], len(shares), job["buffer_size"])
    celery_app = current_app.extensions["celery"]
    for worker_index, count in enumerate(shares):
        publish_task(
            celery_app,
            POPULATE_PULSES,
            [job_id, worker_index, count, job["buffer_size"]],
            configured_queue(celery_app, topology.POPULATE),
        )
    return _progress_or_404(job_id)


@blueprint.get("/populate/<job_id>")
@blueprint.response(200, PopulateJobSchema)
@blueprint.errors(401, 404, 503)
def populate_progress(job_id: str):
    """How many of a populate job's pulses have been published so far."""
    return _progress_or_404(job_id)


def _progress_or_404(job_id: str) -> dict:
    progress = populate.job_progress(get_redis(), job_id) if len(job_id) <= 64 else None
    if progress is None:
        abort(404, message=f"No populate job {job_id!r} (jobs are kept 7 days).")
    return {**progress.__dict__, "done": progress.done}
