"""The embedded MQTT broker: its port comes from settings, and a busy port is a clear error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from content_queue.errors import ConfigError
from content_queue.settings import get_settings, reset_settings
from dispatcher.embedded_mqtt import EmbeddedBroker


def test_port_setting_moves_the_embedded_broker(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VILLAGECAST_EMBEDDED_MQTT_PORT", str(port))
    reset_settings()
    settings = get_settings()
    assert settings.mqtt_is_embedded
    assert settings.resolved_mqtt_url == f"mqtt://127.0.0.1:{port}"
    broker = EmbeddedBroker(settings.resolved_mqtt_url)
    broker.start()
    try:
        # The broker holds the configured port (probed without a connection, so stopping
        # it leaves no half-open session behind).
        with socket.socket() as probe, pytest.raises(OSError, match="in use"):
            probe.bind(("127.0.0.1", port))
    finally:
        broker.stop()


def test_a_busy_port_names_the_setting_to_change(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(f"mqtt://127.0.0.1:{port}")
        with pytest.raises(ConfigError) as info:
            broker.start()
    message = str(info.value)
    assert str(port) in message
    assert "VILLAGECAST_EMBEDDED_MQTT_PORT" in message
    assert "Traceback" not in message
