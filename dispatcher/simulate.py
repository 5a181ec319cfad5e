"""`villagecast device simulate`: reference devices standing in for real boards and speakers."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

from channels._mqtt import parse_mqtt_url
from channels.keys import Keyring
from content_queue.i18n import tr
from content_queue.registry import LedEndpoint, SpeakerEndpoint
from content_queue.settings import Settings
from dispatcher import service
from refdevice.device import ReferenceDevice

__all__ = ["build_devices", "run_simulator"]

log = logging.getLogger(__name__)


def _credentials(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    creds = data.get("credentials", data) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in creds.items() if isinstance(v, str)}


def build_devices(
    settings: Settings,
    *,
    count: int | None = None,
    only: list[str] | None = None,
    credentials: Path | None = None,
) -> list[ReferenceDevice]:
    """One reference device per led/speaker endpoint of devices.yaml, or ``count`` synthetic."""
    address = parse_mqtt_url(settings.resolved_mqtt_url)
    keyring = Keyring.load(settings.keys_dir).public_keys()
    creds = _credentials(credentials)
    state_dir = settings.home / "simulated-devices"
    state_dir.mkdir(parents=True, exist_ok=True)
    if count is not None:
        wanted = [(f"sim-{i:04d}", "led") for i in range(count)]
    else:
        registry = service.registry_cache.get(settings.devices)
        wanted = [
            (ep.device_id, ep.kind)
            for ep in registry.endpoints.values()
            if isinstance(ep, LedEndpoint | SpeakerEndpoint) and ep.enabled
        ]
    if only:
        wanted = [(d, k) for d, k in wanted if d in set(only)]
    return [
        ReferenceDevice(
            device_id=device_id,
            host=address.host,
            port=address.port,
            keyring=keyring,
            state_dir=state_dir,
            prefix=settings.mqtt_prefix,
            username=device_id if device_id in creds else None,
            password=creds.get(device_id),
            kind="speaker" if kind == "speaker" else "led",
            keepalive=settings.mqtt_keepalive_seconds,
            max_skew=settings.max_clock_skew_seconds,
        )
        for device_id, kind in wanted
    ]


def run_simulator(
    settings: Settings,
    *,
    count: int | None = None,
    only: list[str] | None = None,
    credentials: Path | None = None,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    devices = build_devices(settings, count=count, only=only, credentials=credentials)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for dev in devices:
        dev.start()
    print(
        tr(
            "{n} 台模拟设备已连接 {url}，按 Ctrl-C 停止",
            "{n} simulated devices connected to {url}; Ctrl-C stops them",
            n=len(devices),
            url=str(parse_mqtt_url(settings.resolved_mqtt_url)),
        ).render(),
        flush=True,
    )
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for dev in devices:
            dev.stop()
