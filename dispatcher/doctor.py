"""`villagecast doctor`: check every configured part and say what is wrong and how to fix it.

Each check is a small function returning a :class:`Check` (ok, warn, fail or skip) with
what was found and, when something is wrong, the fix in the operator's words. Checks take
what they look at as arguments (paths, URLs, the environment, the time), so each can be
tested on both outcomes without touching the machine's real configuration. Nothing secret
is ever printed: credentials are named by their environment variable only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from content_queue.errors import VillagecastError
from content_queue.i18n import Lang, Text, tr
from content_queue.registry import (
    LedEndpoint,
    OfficialAccountEndpoint,
    Registry,
    SpeakerEndpoint,
    TvFeedEndpoint,
    WecomGroupEndpoint,
    load_registry,
)
from content_queue.settings import Settings

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "Check",
    "DiskUsage",
    "Status",
    "check_audio_disk",
    "check_broker",
    "check_certificate",
    "check_credentials",
    "check_database",
    "check_edge_tts",
    "check_espeak",
    "check_ffmpeg",
    "check_mqtt",
    "check_registry",
    "check_signing_keys",
    "exit_code",
    "expiry_checks",
    "render",
    "run_doctor",
]

Status = Literal["ok", "warn", "fail", "skip"]
EXPIRY_WARNING_DAYS = 30
"""Keys and certificates are reported this many days before they stop working."""
MIN_FREE_BYTES = 200 * 1024 * 1024
WARN_FREE_BYTES = 2 * 1024 * 1024 * 1024
EDGE_HOST = "speech.platform.bing.com"
DiskUsage = Callable[[Path], tuple[int, int, int]]
"""(total, used, free) bytes of the file system holding a path (shutil.disk_usage)."""


@dataclass(frozen=True)
class Check:
    name: str
    """A short stable id (``database``, ``mqtt``, ...), for scripts reading --json."""
    status: Status
    summary: Text
    """What was checked and found, in one line."""
    fix: Text | None = None
    """What to do about it (for warn and fail)."""
    details: tuple[str, ...] = ()

    def as_json(self, lang: Lang | None = None) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary.render(lang),
            "fix": self.fix.render(lang) if self.fix else None,
            "details": list(self.details),
        }


def _ok(name: str, summary: Text, details: Sequence[str] = ()) -> Check:
    return Check(name, "ok", summary, details=tuple(details))


def _err(exc: BaseException) -> str:
    if isinstance(exc, VillagecastError):
        return exc.render()
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]


# -- the store ---------------------------------------------------------------------------


def check_database(url: str) -> Check:
    """Reachable, and at the schema revision this version expects."""
    from content_queue.dbadmin import redact_url, schema_status

    try:
        status = schema_status(url)
    except VillagecastError as exc:
        return Check(
            "database",
            "fail",
            tr("数据库无法连接：{e}", "the database cannot be reached: {e}", e=exc.render()),
            tr(
                "检查 VILLAGECAST_DATABASE_URL 和数据库服务（PostgreSQL：systemctl status "
                "postgresql；密码、主机和端口）",
                "check VILLAGECAST_DATABASE_URL and the database service (PostgreSQL: "
                "systemctl status postgresql; password, host and port)",
            ),
        )
    if status.up_to_date:
        return _ok(
            "database",
            tr(
                "数据库 {u} 可用，表结构为最新（{r}）",
                "database {u} reachable, schema at head ({r})",
                u=redact_url(url),
                r=",".join(status.current),
            ),
        )
    return Check(
        "database",
        "fail",
        tr(
            "数据库 {u} 的表结构不是最新：当前 {c}，应为 {h}",
            "database {u} is not migrated: at {c}, expected {h}",
            u=redact_url(url),
            c=",".join(status.current) or "-",
            h=",".join(status.head),
        ),
        tr(
            "运行 `villagecast db upgrade`（先备份：`villagecast backup create --out ...`）",
            "run `villagecast db upgrade` (back up first: `villagecast backup create --out ...`)",
        ),
    )


# -- the Celery broker -------------------------------------------------------------------


def check_broker(url: str, *, timeout: float = 3.0) -> list[Check]:
    """Reachable; on Redis also durable (AOF) and never evicting queued tasks."""
    from content_queue.dbadmin import redact_url

    shown = redact_url(url.removeprefix("sqla+"))
    if url.startswith("sqla+"):
        return [
            _ok(
                "broker",
                tr(
                    "使用内置消息队列（{u}）：仅适合单机",
                    "embedded broker ({u}): one machine only",
                    u=shown,
                ),
            )
        ]
    if url.startswith(("redis://", "rediss://")):
        return _check_redis(url, shown, timeout=timeout)
    try:
        from kombu.connection import Connection

        with Connection(url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        return [_broker_down(shown, exc)]
    return [_ok("broker", tr("消息队列 {u} 可连接", "broker {u} reachable", u=shown))]


def _broker_down(shown: str, exc: BaseException) -> Check:
    return Check(
        "broker",
        "fail",
        tr(
            "消息队列 {u} 无法连接：{e}",
            "the broker {u} cannot be reached: {e}",
            u=shown,
            e=_err(exc),
        ),
        tr(
            "检查 VILLAGECAST_BROKER_URL 和服务"
            "（systemctl status redis-server 或 rabbitmq-server）",
            "check VILLAGECAST_BROKER_URL and the service (systemctl status redis-server or "
            "rabbitmq-server)",
        ),
    )


def _check_redis(url: str, shown: str, *, timeout: float) -> list[Check]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:
        return [_broker_down(shown, exc)]
    out = [_ok("broker", tr("Redis {u} 可连接", "Redis {u} reachable", u=shown))]
    try:
        conf = {**client.config_get("appendonly"), **client.config_get("maxmemory-policy")}
    except Exception:  # CONFIG may be renamed or disabled on a hardened server
        return [
            *out,
            Check(
                "broker_durability",
                "warn",
                tr(
                    "无法读取 Redis 配置（CONFIG 命令被禁用），未能检查持久化",
                    "cannot read the Redis configuration (CONFIG is disabled); durability "
                    "not checked",
                ),
                tr(
                    "确认 redis.conf 中有 appendonly yes 和 maxmemory-policy noeviction",
                    "make sure redis.conf has appendonly yes and maxmemory-policy noeviction",
                ),
            ),
        ]
    finally:
        client.close()
    problems = []
    if conf.get("appendonly") != "yes":
        problems.append("appendonly yes")
    if conf.get("maxmemory-policy") != "noeviction":
        problems.append("maxmemory-policy noeviction")
    if problems:
        out.append(
            Check(
                "broker_durability",
                "warn",
                tr(
                    "Redis 配置不适合生产：断电或内存满时可能丢失任务（{p}）",
                    "Redis may lose tasks on a power cut or when memory is full (needs {p})",
                    p=", ".join(problems),
                ),
                tr(
                    "在 redis.conf 中设置 {p}，然后重启 redis-server（见 deploy/redis/redis.conf）",
                    "set {p} in redis.conf and restart redis-server (see deploy/redis/redis.conf)",
                    p=", ".join(problems),
                ),
            )
        )
    else:
        out.append(
            _ok(
                "broker_durability",
                tr(
                    "Redis 已开启 AOF 持久化，内存满时不丢弃任务",
                    "Redis has AOF on and never evicts tasks",
                ),
            )
        )
    return out


# -- MQTT --------------------------------------------------------------------------------


def check_mqtt(
    url: str,
    *,
    password_env: str,
    environ: Mapping[str, str],
    keepalive: int = 30,
    timeout: float = 5.0,
) -> Check:
    """Log in with the dispatcher's identity (the broker checks the password), then leave."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from channels._mqtt import parse_mqtt_url

    try:
        address = parse_mqtt_url(url)
    except VillagecastError as exc:
        return Check(
            "mqtt", "fail", exc.text, tr("改正 VILLAGECAST_MQTT_URL", "fix VILLAGECAST_MQTT_URL")
        )
    password = environ.get(password_env) or None
    if address.username and password is None:
        return Check(
            "mqtt",
            "fail",
            tr(
                "MQTT 用户 {u} 没有密码：环境变量 {v} 未设置",
                "no password for MQTT user {u}: {v} is not set",
                u=address.username,
                v=password_env,
            ),
            tr(
                "把 credentials.json 中 {u} 的密码写入 {v}（例如 /etc/villagecast/env，权限 600）",
                "put {u}'s password from credentials.json into {v} (e.g. /etc/villagecast/env, "
                "mode 600)",
                u=address.username,
                v=password_env,
            ),
        )
    done = threading.Event()
    result: list[object] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"villagecast-doctor-{socket.gethostname()}-{os.getpid()}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    if address.username:
        client.username_pw_set(address.username, password)
    if address.tls:
        client.tls_set()

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object = None) -> None:
        result.append(rc)
        done.set()

    client.on_connect = on_connect
    who = address.username or tr("匿名", "anonymous").render()
    try:
        client.connect(address.host, address.port, keepalive)
        client.loop_start()
        done.wait(timeout)
    except (OSError, ssl.SSLError) as exc:
        return Check(
            "mqtt",
            "fail",
            tr(
                "MQTT 服务器 {a} 无法连接：{e}",
                "the MQTT broker {a} cannot be reached: {e}",
                a=str(address),
                e=_err(exc),
            ),
            tr(
                "检查 mosquitto 是否在运行（systemctl status mosquitto）以及地址和端口",
                "check that mosquitto runs (systemctl status mosquitto), the host and the port",
            ),
        )
    finally:
        if result and not getattr(result[0], "is_failure", True):
            client.disconnect()
        client.loop_stop()
    if not result:
        return Check(
            "mqtt",
            "fail",
            tr(
                "MQTT 服务器 {a} 在 {t} 秒内没有应答",
                "the MQTT broker {a} did not answer within {t} s",
                a=str(address),
                t=timeout,
            ),
            tr("检查防火墙和 mosquitto 的日志", "check the firewall and mosquitto's log"),
        )
    rc = result[0]
    if getattr(rc, "is_failure", False):
        return Check(
            "mqtt",
            "fail",
            tr(
                "MQTT 服务器 {a} 拒绝了用户 {u}：{rc}",
                "the MQTT broker {a} refused user {u}: {rc}",
                a=str(address),
                u=who,
                rc=str(rc),
            ),
            tr(
                "核对 {v} 与 credentials.json 中的密码，并确认 mosquitto 使用了 "
                "`villagecast mqtt config` 生成的 passwd 文件（改后 systemctl reload mosquitto）",
                "check {v} against credentials.json and that mosquitto uses the passwd file "
                "from `villagecast mqtt config` (then systemctl reload mosquitto)",
                v=password_env,
            ),
        )
    return _ok(
        "mqtt",
        tr(
            "已用调度器身份 {u} 登录 MQTT 服务器 {a} 并断开",
            "logged in to the MQTT broker {a} as {u} and left",
            a=str(address),
            u=who,
        ),
    )


# -- keys and certificates ---------------------------------------------------------------


def _days_left(moment: datetime, now: datetime) -> int:
    return (moment - now) // timedelta(days=1)


def check_signing_keys(keys_dir: Path, *, now: datetime, needed: bool = True) -> list[Check]:
    """The key ring loads (private key present, mode 600, directory 700); retired keys that
    devices still accept are reported before they stop being accepted."""
    from channels.keys import Keyring

    if not (keys_dir / "keyring.json").exists():
        if not needed:
            return [
                Check(
                    "keys",
                    "skip",
                    tr("没有 LED 屏或广播，不需要签名密钥", "no devices: no keys needed"),
                )
            ]
        return [
            Check(
                "keys",
                "fail",
                tr("找不到签名密钥（{d}）", "no signing keys in {d}", d=str(keys_dir)),
                tr(
                    "运行 `villagecast keys init`，"
                    "或用 `villagecast backup restore` 恢复原来的密钥",
                    "run `villagecast keys init`, or restore the old keys with "
                    "`villagecast backup restore`",
                ),
            )
        ]
    try:
        keyring = Keyring.load(keys_dir)
    except VillagecastError as exc:
        return [
            Check(
                "keys",
                "fail",
                exc.text,
                tr(
                    "按上面的提示修复；密钥文件应属于运行服务的用户，目录权限 700、私钥 600",
                    "fix as above; the key files must belong to the service user, directory "
                    "mode 700, private key 600",
                ),
            )
        ]
    out = []
    mode = stat.S_IMODE(keys_dir.stat().st_mode)
    if mode & 0o077:
        out.append(
            Check(
                "keys",
                "fail",
                tr(
                    "密钥目录 {d} 其他用户可以访问（权限 {m:o}）",
                    "the key directory {d} is open to other users (mode {m:o})",
                    d=str(keys_dir),
                    m=mode,
                ),
                tr("执行 chmod 700 {d}", "run chmod 700 {d}", d=str(keys_dir)),
            )
        )
    active = keyring.active().key_id
    out.append(
        _ok(
            "keys",
            tr(
                "签名密钥可用：当前密钥 {k}，私钥权限 600",
                "signing keys usable: active key {k}, private key mode 600",
                k=active,
            ),
        )
    )
    for item in keyring.export_public(now=now)["keys"]:
        if item["not_after"] is None:
            continue
        ends = datetime.fromisoformat(item["not_after"])
        days = _days_left(ends, now)
        if days < EXPIRY_WARNING_DAYS:
            out.append(
                Check(
                    "key_expiry",
                    "warn",
                    tr(
                        "旧密钥 {k} 将在 {d} 天后（{t}）失效：还没有新公钥的设备届时将拒绝所有指令",
                        "the retired key {k} stops being accepted in {d} day(s) ({t}): devices "
                        "without the new public key will then refuse every command",
                        k=item["key_id"],
                        d=days,
                        t=item["not_after"],
                    ),
                    tr(
                        "用 `villagecast keys export` 把新公钥 {a} 下发到每台设备，再看 "
                        "`villagecast devices status` 中没有 unknown_key 拒绝",
                        "give every device the new public key {a} (`villagecast keys export`) "
                        "and check `villagecast devices status` shows no unknown_key refusals",
                        a=active,
                    ),
                )
            )
    return out


def check_certificate(path: Path, *, now: datetime) -> Check:
    """A PEM certificate (the broker's TLS certificate, the county CA) and its expiry."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Check(
            "certificate",
            "fail",
            tr(
                "无法读取证书 {p}：{e}",
                "cannot read the certificate {p}: {e}",
                p=str(path),
                e=_err(exc),
            ),
            tr("检查文件路径和权限", "check the path and the permissions"),
        )
    ends = cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string()
    days = _days_left(ends, now)
    if days < 0 or ends <= now:
        status: Status = "fail"
    elif days < EXPIRY_WARNING_DAYS:
        status = "warn"
    else:
        return _ok(
            "certificate",
            tr(
                "证书 {p}（{s}）有效期至 {t}",
                "certificate {p} ({s}) valid until {t}",
                p=str(path),
                s=subject,
                t=ends.strftime("%Y-%m-%d"),
            ),
        )
    return Check(
        "certificate",
        status,
        tr(
            "证书 {p}（{s}）{t} 到期（剩 {d} 天）",
            "certificate {p} ({s}) expires {t} ({d} day(s) left)",
            p=str(path),
            s=subject,
            t=ends.strftime("%Y-%m-%d"),
            d=max(days, 0),
        ),
        tr(
            "按 docs/mqtt-broker.md 的 TLS 一节签发新证书，替换后 systemctl reload mosquitto",
            "issue a new certificate as in docs/mqtt-broker.md (TLS), replace it and "
            "systemctl reload mosquitto",
        ),
    )


def expiry_checks(
    settings: Settings, *, now: datetime | None = None, certificates: Sequence[Path] = ()
) -> list[Check]:
    """Only the key and certificate expiry warnings (what a dashboard shows 30 days ahead)."""
    now = now or datetime.now(UTC)
    keys = [
        c
        for c in check_signing_keys(settings.keys_dir, now=now, needed=False)
        if c.name == "key_expiry"
    ]
    return keys + [check_certificate(p, now=now) for p in certificates]


# -- speech and audio --------------------------------------------------------------------


def check_espeak(*, binary: str = "espeak-ng", needed: bool = True) -> Check:
    """The offline engine (the fallback that always works) and its Mandarin voice."""
    exe = shutil.which(binary)
    level: Status = "fail" if needed else "warn"
    if exe is None:
        return Check(
            "tts_offline",
            level,
            tr("找不到离线语音引擎 {b}", "the offline speech engine {b} is missing", b=binary),
            tr("sudo apt-get install espeak-ng", "sudo apt-get install espeak-ng"),
        )
    try:
        voices = subprocess.run(
            [exe, "--voices=cmn"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        voices = _err(exc)
    if not re.search(r"\scmn\s", voices):
        return Check(
            "tts_offline",
            level,
            tr("espeak-ng 没有普通话语音（cmn）", "espeak-ng has no Mandarin voice (cmn)"),
            tr("sudo apt-get install espeak-ng-data", "sudo apt-get install espeak-ng-data"),
        )
    return _ok(
        "tts_offline", tr("离线语音 espeak-ng（cmn）可用", "offline speech espeak-ng (cmn) ready")
    )


def check_edge_tts(*, host: str = EDGE_HOST, port: int = 443, timeout: float = 3.0) -> Check:
    """Whether edge-tts' service answers from here: a warning only (the offline engine
    speaks when it does not)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return Check(
            "tts_edge",
            "warn",
            tr(
                "在线语音服务 {h} 无法连接（{e}）：广播将使用离线语音 espeak-ng",
                "the online speech service {h} cannot be reached ({e}): loudspeakers will "
                "use the offline espeak-ng voice",
                h=host,
                e=_err(exc),
            ),
            tr(
                "需要更自然的声音时检查外网或代理；否则可设 VILLAGECAST_TTS_MODE=offline",
                "check the internet access or proxy if the natural voice is wanted; otherwise "
                "set VILLAGECAST_TTS_MODE=offline",
            ),
        )
    return _ok(
        "tts_edge", tr("在线语音服务 {h} 可连接", "online speech service {h} reachable", h=host)
    )


def check_ffmpeg(*, binary: str = "ffmpeg", need_mp3: bool = True, need_amr: bool = False) -> Check:
    """ffmpeg with the MP3 encoder (loudspeakers) and the AMR encoder (WeCom voice)."""
    exe = shutil.which(binary)
    if exe is None:
        return Check(
            "ffmpeg",
            "fail" if (need_mp3 or need_amr) else "warn",
            tr("找不到 {b}", "{b} is missing", b=binary),
            tr(
                "sudo apt-get install ffmpeg libavcodec-extra",
                "sudo apt-get install ffmpeg libavcodec-extra",
            ),
        )
    try:
        encoders = subprocess.run(
            [exe, "-hide_banner", "-encoders"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        encoders = ""
    missing = [
        (enc, needed)
        for enc, needed in (("libmp3lame", need_mp3), ("libopencore_amrnb", need_amr))
        if not re.search(rf"\s{enc}\s", encoders)
    ]
    if not missing:
        return _ok(
            "ffmpeg", tr("ffmpeg 有 MP3 和 AMR 编码器", "ffmpeg has the MP3 and AMR encoders")
        )
    return Check(
        "ffmpeg",
        "fail" if any(needed for _, needed in missing) else "warn",
        tr(
            "ffmpeg 缺少编码器：{e}",
            "ffmpeg lacks the encoder(s): {e}",
            e=", ".join(e for e, _ in missing),
        ),
        tr(
            "sudo apt-get install libavcodec-extra（AMR 用于企业微信语音）",
            "sudo apt-get install libavcodec-extra (AMR is for WeCom voice messages)",
        ),
    )


def check_audio_disk(
    path: Path,
    *,
    min_free: int = MIN_FREE_BYTES,
    warn_free: int = WARN_FREE_BYTES,
    usage: DiskUsage | None = None,
) -> Check:
    """Free space where the clip cache, feeds and (SQLite) store live."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    total, _used, free = usage(probe) if usage else shutil.disk_usage(probe)
    gib = free / 1024**3
    if free < min_free:
        status: Status = "fail"
    elif free < warn_free:
        status = "warn"
    else:
        return _ok(
            "disk", tr("{p} 剩余空间 {g:.1f} GB", "{g:.1f} GB free at {p}", p=str(probe), g=gib)
        )
    return Check(
        "disk",
        status,
        tr(
            "{p} 只剩 {g:.2f} GB（共 {t:.1f} GB）：音频缓存和数据库需要空间",
            "only {g:.2f} GB free at {p} (of {t:.1f} GB): the audio cache and the store need room",
            p=str(probe),
            g=gib,
            t=total / 1024**3,
        ),
        tr(
            "清理磁盘，或把 VILLAGECAST_HOME 放到更大的分区",
            "free some space, or move VILLAGECAST_HOME to a larger disk",
        ),
    )


# -- devices.yaml and credentials ----------------------------------------------------------


def check_registry(path: Path) -> tuple[Check, Registry | None]:
    try:
        registry = load_registry(path)
    except VillagecastError as exc:
        return (
            Check(
                "registry",
                "fail",
                exc.text,
                tr(
                    "运行 `villagecast devices check` 查看并改正", "run `villagecast devices check`"
                ),
                details=tuple(str(d) for d in getattr(exc, "details", []) or [])[:10],
            ),
            None,
        )
    return (
        _ok(
            "registry",
            tr(
                "{p}：{v} 个村，{e} 个端点",
                "{p}: {v} villages, {e} endpoints",
                p=str(path),
                v=len(registry.villages),
                e=len(registry.endpoints),
            ),
        ),
        registry,
    )


def _secret_envs(registry: Registry) -> list[tuple[str, str]]:
    """(endpoint id, variable name) for every enabled endpoint that needs a secret."""
    out = []
    for ep in registry.endpoints.values():
        if not ep.enabled:
            continue
        if isinstance(ep, WecomGroupEndpoint):
            out.append((ep.id, ep.webhook_key_env))
        elif isinstance(ep, OfficialAccountEndpoint):
            out.append((ep.id, ep.app_secret_env))
            # The server configuration's token and (safe mode) EncodingAESKey: unset, the
            # account's pushed events are refused (its publishes are still polled).
            out += [(ep.id, v) for v in (ep.event_token_env, ep.event_aes_key_env) if v]
        elif isinstance(ep, TvFeedEndpoint) and ep.ingest_secret_env:
            out.append((ep.id, ep.ingest_secret_env))
    return out


def check_credentials(registry: Registry, *, environ: Mapping[str, str]) -> Check:
    """Every secret devices.yaml names is set (names only are ever printed, never values)."""
    needed = _secret_envs(registry)
    if not needed:
        return Check("credentials", "skip", tr("没有需要密钥的端点", "no endpoint needs a secret"))
    missing: dict[str, list[str]] = {}
    for endpoint, var in needed:
        if not environ.get(var, "").strip():
            missing.setdefault(var, []).append(endpoint)
    if not missing:
        return _ok(
            "credentials",
            tr(
                "{n} 个端点的密钥环境变量都已设置",
                "the secret variables of all {n} endpoints are set",
                n=len(needed),
            ),
        )
    return Check(
        "credentials",
        "fail",
        tr(
            "{n} 个环境变量未设置，这些端点的投递（或公众号事件接收）会失败",
            "{n} environment variable(s) not set; deliveries to these endpoints (or the "
            "official accounts' pushed events) will fail",
            n=len(missing),
        ),
        tr(
            "在服务的环境文件（如 /etc/villagecast/env，权限 600）中设置这些变量，然后重启服务",
            "set them in the services' environment file (e.g. /etc/villagecast/env, mode 600) "
            "and restart the services",
        ),
        details=tuple(f"{var}: {', '.join(eps)}" for var, eps in sorted(missing.items())),
    )


# -- all together --------------------------------------------------------------------------


def run_doctor(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
    certificates: Sequence[Path] = (),
    online: bool = True,
) -> list[Check]:
    """Every check that applies to this configuration, in the order an operator fixes them."""
    environ = os.environ if environ is None else environ
    now = now or datetime.now(UTC)
    checks: list[Check] = []
    registry_check, registry = check_registry(settings.devices)
    checks.append(registry_check)
    checks.append(check_database(settings.resolved_database_url))
    checks += check_broker(settings.resolved_broker_url)
    endpoints = list(registry.endpoints.values()) if registry else []
    devices = any(isinstance(ep, LedEndpoint | SpeakerEndpoint) for ep in endpoints)
    speakers = any(isinstance(ep, SpeakerEndpoint) for ep in endpoints)
    voice = any(isinstance(ep, WecomGroupEndpoint) and ep.voice for ep in endpoints)
    if settings.mqtt_is_embedded:
        checks.append(
            Check(
                "mqtt",
                "skip",
                tr(
                    "使用内置 MQTT（由 `villagecast up` 启动，仅本机）",
                    "embedded MQTT (started by `villagecast up`, this machine only)",
                ),
            )
        )
    elif devices or registry is None:
        checks.append(
            check_mqtt(
                settings.resolved_mqtt_url,
                password_env=settings.mqtt_password_env,
                environ=environ,
                keepalive=settings.mqtt_keepalive_seconds,
            )
        )
    checks += check_signing_keys(settings.keys_dir, now=now, needed=devices)
    checks += [check_certificate(p, now=now) for p in certificates]
    if speakers or voice:
        if settings.tts_mode != "edge":
            checks.append(check_espeak(needed=settings.tts_mode == "offline" or not online))
        if settings.tts_mode != "offline" and online:
            checks.append(check_edge_tts())
        checks.append(check_ffmpeg(need_mp3=speakers, need_amr=voice))
    if registry is not None:
        checks.append(check_credentials(registry, environ=environ))
    checks.append(check_audio_disk(settings.home))
    return checks


_MARK = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}


def render(checks: Sequence[Check], lang: Lang | None = None) -> str:
    lines = []
    for c in checks:
        lines.append(f"{_MARK[c.status]} {c.summary.render(lang)}")
        lines += [f"    {d}" for d in c.details]
        if c.fix is not None and c.status in ("warn", "fail"):
            lines.append("    " + tr("→ {f}", "→ {f}", f=c.fix).render(lang))
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append("")
    lines.append(
        tr(
            "检查完毕：{f} 项失败，{w} 项警告",
            "done: {f} failure(s), {w} warning(s)",
            f=fails,
            w=warns,
        ).render(lang)
    )
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    """1 when anything failed (warnings alone do not fail the run)."""
    return 1 if any(c.status == "fail" for c in checks) else 0
