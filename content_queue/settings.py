"""One settings object for the whole system, read from VILLAGECAST_* environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from content_queue.errors import ConfigError
from content_queue.i18n import tr

__all__ = ["Settings", "get_settings", "reset_settings"]


EMBEDDED_MQTT_PORT = 18830
"""Where `villagecast up` runs its embedded MQTT broker (loopback only) by default."""


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("villagecast", appauthor=False))


class Settings(BaseSettings):
    """Runtime configuration. Secrets never live here: endpoints name the env var holding them."""

    model_config = SettingsConfigDict(env_prefix="VILLAGECAST_", extra="forbid")

    home: Path = Field(default_factory=_default_home)
    """Data directory: the SQLite store, the embedded broker, generated feeds."""

    database_url: str | None = None
    """SQLAlchemy URL of the store; default SQLite (WAL) under ``home``."""

    broker_url: str | None = None
    """Celery broker; default the embedded SQLAlchemy/SQLite broker under ``home``."""

    devices: Path = Path("devices.yaml")
    """The village and device registry."""

    lang: str | None = None

    # Delivery policy. Defaults suit a county; tests shrink them.
    lease_seconds: float = Field(default=120.0, gt=0)
    """How long a worker may hold a delivery before the sweeper assumes it died."""
    redoorbell_seconds: float = Field(default=60.0, gt=0)
    """A pending delivery not picked up this long after its doorbell is rung again."""
    sweep_interval: float = Field(default=2.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=50)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_cap_seconds: float = Field(default=900.0, gt=0)
    """Backoff cap; kept well below Redis' 3600 s visibility timeout."""
    batch_size: int = Field(default=25, ge=1, le=1000)
    """Deliveries of one channel kind carried by one Celery task. Unless it is set, a
    channel may carry more (``Channel.task_batch``: LED boards take 500)."""

    def batch_size_for(self, task_batch: int | None) -> int:
        """Deliveries per task for a channel whose own default is ``task_batch``."""
        if task_batch is None or "batch_size" in self.model_fields_set:
            return self.batch_size
        return task_batch

    worker_concurrency: int = Field(default=2, ge=1, le=64)

    feed_host: str = "127.0.0.1"
    feed_port: int = Field(default=8765, ge=0, le=65535)
    feed_base_url: str | None = None
    """Public base URL of the feeds (for links inside them); default http://host:port."""
    http_timeout_seconds: float = Field(default=10.0, gt=0)

    # The township dashboard (issue #6): `villagecast serve`, also run by `up`.
    web_host: str = "127.0.0.1"
    """Where the dashboard listens; loopback by default (put a TLS proxy in front)."""
    web_port: int = Field(default=8780, ge=0, le=65535)
    embedded_mqtt_port: int = Field(default=EMBEDDED_MQTT_PORT, ge=1, le=65535)
    """Loopback port of the embedded MQTT broker (only without VILLAGECAST_MQTT_URL); a
    second installation on one machine picks another."""
    web_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    """A login lasts at most this long."""
    web_session_idle_minutes: float = Field(default=120.0, gt=0)
    """A login unused this long ends."""
    web_secure_cookies: bool = False
    """Mark cookies Secure (set it when the dashboard is reached over HTTPS)."""
    web_forwarded_allow_ips: str | None = None
    """Proxies trusted for X-Forwarded-For (comma-separated); none by default."""
    offline_alert_minutes: float = Field(default=30.0, gt=0)
    """A device offline longer than this is highlighted and listed as needing a person."""
    metrics_token_env: str = "VILLAGECAST_METRICS_TOKEN"  # noqa: S105 - a name, not a secret
    """Name of the environment variable holding the bearer token for /metrics; without it,
    /metrics answers loopback clients only."""

    # MQTT (LED boards and loudspeakers, issue #3).
    mqtt_url: str | None = None
    """mqtt://user@host:port of the broker; default an embedded broker started by `up`."""
    mqtt_password_env: str = "VILLAGECAST_MQTT_PASSWORD"  # noqa: S105 - a name, not a secret
    """Name of the environment variable holding the dispatcher's MQTT password."""
    mqtt_prefix: str = Field(default="vc/v1", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    mqtt_keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    command_ttl_seconds: int = Field(default=86400, ge=60)
    """Commands of notices without an expiry stop being valid after this long."""
    max_clock_skew_seconds: int = Field(default=300, ge=1)
    tts_mode: Literal["auto", "edge", "offline"] = "auto"
    """auto: edge-tts, falling back to espeak-ng offline; or one engine only."""
    synthesis_concurrency: int = Field(default=2, ge=1, le=16)
    """At most this many speech syntheses at once on one machine (the vc.synthesis worker's
    threads, and lock-file slots shared by every process; see channels/_synthesis.py)."""
    ack_timeout_seconds: float = Field(default=180.0, gt=0)
    """An online device that has not acked a command this long gets it again."""

    # Review before publishing (issue #7).
    review_categories: list[str] = Field(
        default_factory=lambda: ["village_finance", "farm_subsidy"]
    )
    """Categories a second person must approve before anything goes out (JSON list in
    ``VILLAGECAST_REVIEW_CATEGORIES``; ``[]`` turns review off)."""

    # WeCom group robots (issue #5).
    wecom_base_url: str = Field(default="https://qyapi.weixin.qq.com", pattern=r"^https?://\S+$")
    """Where the webhook API lives: the real host, a government proxy, or a local stand-in."""
    wecom_rate_per_minute: int = Field(default=20, ge=0, le=10000)
    """Messages one robot may send per window (WeCom allows 20 a minute); 0 turns the shared
    limiter off (benchmarks only: WeCom then answers 45009 and the delivery is retried)."""
    wecom_rate_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    """The window of that limit: WeCom's minute. Tests shrink it to run the same logic fast."""
    wecom_max_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    """How long a worker may wait for a robot's window or send lock before it reschedules the
    delivery instead (never more than a quarter of ``lease_seconds``)."""

    # WeChat official accounts (issue #5).
    wechat_base_url: str = Field(
        default="https://api.weixin.qq.com", pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
    )
    """Where every official-account API call goes, the token included: the real host, a
    government proxy, or the test stand-in. ``/cgi-bin/...`` is appended."""

    # Printed disclosure-board posters (issue #7).
    poster_font: Path | None = None
    """A TrueType CJK font file to embed in posters; default Debian's fonts-wqy-zenhei."""

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'villagecast.sqlite'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.sqlite'}"

    @property
    def broker_is_embedded(self) -> bool:
        return self.resolved_broker_url.startswith("sqla+")

    @property
    def resolved_mqtt_url(self) -> str:
        return self.mqtt_url or f"mqtt://127.0.0.1:{self.embedded_mqtt_port}"

    @property
    def mqtt_is_embedded(self) -> bool:
        return self.mqtt_url is None

    @property
    def resolved_web_url(self) -> str:
        host = self.web_host if ":" not in self.web_host else f"[{self.web_host}]"
        return f"http://{host}:{self.web_port}"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def feeds_dir(self) -> Path:
        return self.home / "feeds"

    @property
    def resolved_feed_base_url(self) -> str:
        return (self.feed_base_url or f"http://{self.feed_host}:{self.feed_port}").rstrip("/")

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.feeds_dir.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def _cached(pid: int, env_key: tuple[tuple[str, str], ...]) -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            tr(
                "环境变量 VILLAGECAST_{name}：{msg}",
                "environment variable VILLAGECAST_{name}: {msg}",
                name=".".join(str(p) for p in err["loc"]).upper(),
                msg=err["msg"],
            )
            for err in exc.errors()
        ]
        raise ConfigError(
            tr("配置有误，请检查以下环境变量", "the configuration is invalid"),
            details=problems,
        ) from None


def get_settings() -> Settings:
    """Settings for this process, re-read whenever a VILLAGECAST_* variable changes."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("VILLAGECAST_")))
    return _cached(os.getpid(), key)


def reset_settings() -> None:
    _cached.cache_clear()
