"""The names of the pulses tasks, defined once.

They are part of the producers' contract (a producer with nothing but Celery sends
`ingestor.ingest_pulses` by name) and never change. A module with no imports, so the
tasks, the wiring (routes, retry annotations, beat) and the publishers can all import
it without an import cycle.
"""

INGEST_PULSES = "ingestor.ingest_pulses"
INGEST_PULSE = "ingestor.ingest_pulse"
PERSIST_PULSES = "ingestor.persist_pulses"
POPULATE_PULSES = "ingestor.populate_pulses"

# Every task of the project: each gets the retry budget of the settings.
ALL = (INGEST_PULSES, INGEST_PULSE, PERSIST_PULSES, POPULATE_PULSES)
