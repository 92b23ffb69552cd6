"""The task names are the producers' contract: defined once, and never renamed."""

from ingestor.pulses import task_names


def test_the_task_names_are_the_contracts():
    assert task_names.INGEST_PULSES == "ingestor.ingest_pulses"
    assert task_names.INGEST_PULSE == "ingestor.ingest_pulse"
    assert task_names.PERSIST_PULSES == "ingestor.persist_pulses"
    assert task_names.POPULATE_PULSES == "ingestor.populate_pulses"
    assert set(task_names.ALL) == {
        "ingestor.ingest_pulses",
        "ingestor.ingest_pulse",
        "ingestor.persist_pulses",
        "ingestor.populate_pulses",
    }
