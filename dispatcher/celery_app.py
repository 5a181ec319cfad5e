"""The one Celery app: embedded SQLite broker by default, Redis or RabbitMQ by URL."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from content_queue.registry import ENDPOINT_KINDS
from content_queue.settings import Settings, get_settings

__all__ = ["QUEUE_PREFIX", "SYNTHESIS_QUEUE", "app", "app_for", "make_app", "queue_for"]

QUEUE_PREFIX = "vc."
SYNTHESIS_QUEUE = f"{QUEUE_PREFIX}synthesis"
"""Speech synthesis before a loudspeaker fan-out, consumed by its own K-thread worker."""


def queue_for(kind: str) -> str:
    """One queue per channel kind, so slow synthesis never holds up the LED boards."""
    return f"{QUEUE_PREFIX}{kind}"


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    conf: dict[str, Any] = {
        "broker_url": url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: a task is acked after it ran, and comes back if its process dies.
        # The store's lease and attempt count bound a task that kills its worker every time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Each queue has its own direct exchange: bound to a shared default exchange, one
        # message would be copied into every channel's queue.
        "task_queues": [
            Queue(q, Exchange(q, type="direct"), routing_key=q)  # type: ignore[no-untyped-call]
            for q in [*(queue_for(k) for k in ENDPOINT_KINDS), SYNTHESIS_QUEUE]
        ],
        "task_default_queue": queue_for("tv_feed"),
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 4,
        # Publishing from the CLI must not hang on a dead broker: the store keeps the
        # notice and the sweeper rings again, so fail fast here.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
        "timezone": "UTC",
    }
    if url.startswith(("redis://", "rediss://")):
        # Retries are capped at retry_cap_seconds, far below this, so no countdown ever
        # outlives the visibility timeout (which would make Redis redeliver it).
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
        conf["broker_connection_max_retries"] = 3
    if url.startswith("sqla+"):
        # Same transport, shorter poll (see _sqla_transport); kombu hands the transport
        # options to create_engine.
        conf["broker_url"] = url.removeprefix("sqla+")
        conf["broker_transport"] = "dispatcher._sqla_transport:Transport"
        conf["broker_transport_options"] = {"connect_args": {"timeout": 60}}
    return conf


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if settings.broker_is_embedded:
        settings.ensure_home()
    celery = Celery("villagecast")
    celery.conf.update(celery_config(settings))
    celery.autodiscover_tasks(["dispatcher"], related_name="tasks", force=True)
    return celery


app = make_app()
_apps: dict[str, Celery] = {get_settings().resolved_broker_url: app}


def app_for(settings: Settings) -> Celery:
    """The app for these settings' broker (the CLI and tests may switch brokers at run time)."""
    url = settings.resolved_broker_url
    found = _apps.get(url)
    if found is None:
        found = _apps[url] = make_app(settings)
    return found
