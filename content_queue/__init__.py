"""Durable store: notices, deliveries, attempts, audit; the registry; settings."""
