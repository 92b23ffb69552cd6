"""The broker side of the ingestor: the queue contract, the Celery app, message decoding."""
