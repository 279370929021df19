"""Alerts leave the service here: MQTT publisher with a durable outbox (see publisher.py)."""
