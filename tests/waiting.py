"""Waiting for something the tests cannot be told about: poll it, as local_deployment polls
for its servers and processes (the same function; a TimeoutError fails the test)."""

from local_deployment.servers import wait_until as wait_for

__all__ = ["wait_for"]
