"""Helpers shared by the integration tests: the test services and a real worker."""
