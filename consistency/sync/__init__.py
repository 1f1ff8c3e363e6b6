"""The write side: keep the stores in agreement (outbox relay, cache, analytics export, schedules)."""
