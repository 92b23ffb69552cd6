"""Broker plumbing, knowing no domain: the queue contract (topology), the Decimal JSON
of Celery messages, the topology and dead-lettering consumer steps, the dead-letter
publisher, py-amqp reading ahead. The pulses domain imports it, never the reverse."""
