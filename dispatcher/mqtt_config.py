"""Generate a locked-down mosquitto 2.x configuration (conf, passwd, ACL) for the registry."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from content_queue.errors import ConfigError
from content_queue.i18n import Text, tr
from content_queue.registry import LedEndpoint, Registry, SpeakerEndpoint

__all__ = [
    "CREDENTIALS_FILE",
    "GeneratedConfig",
    "Identity",
    "TlsOptions",
    "generate",
    "identities",
    "load_credentials",
    "mosquitto_password_hash",
    "write",
]

CREDENTIALS_FILE = "credentials.json"

# mosquitto_passwd's default since 2.0 (-H sha512-pbkdf2): "$7$<iterations>$<salt>$<hash>".
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_HASH_BYTES = 64
_CHARS_FORBIDDEN = {"+": "+", "#": "#", "/": "/", ":": ":", "\0": "NUL"}


def mosquitto_password_hash(password: str, *, salt: bytes | None = None) -> str:
    """Hash a password the way mosquitto_passwd 2.0 writes it (PBKDF2-HMAC-SHA512, $7$)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    if len(salt) != _SALT_BYTES:
        raise ValueError(f"mosquitto uses a {_SALT_BYTES}-byte salt, got {len(salt)}")
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, _PBKDF2_ITERATIONS, _HASH_BYTES
    )
    b64 = base64.b64encode
    return f"$7${_PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


@dataclass(frozen=True)
class Identity:
    """One MQTT login: the dispatcher, or one LED board / loudspeaker (username = device_id)."""

    username: str
    role: Literal["dispatcher", "device"]
    device_id: str | None


@dataclass(frozen=True)
class TlsOptions:
    """A TLS listener for devices; the files are PEM and must be readable by the mosquitto user."""

    cafile: Path
    certfile: Path
    keyfile: Path
    port: int = 8883
    host: str | None = None
    """Bind address; None listens on every interface."""
    require_certificate: bool = False
    """Also demand a client certificate signed by ``cafile`` (in addition to the password)."""


@dataclass(frozen=True)
class GeneratedConfig:
    """File name -> content for the broker, plus the plaintext passwords for provisioning."""

    files: dict[str, str]
    credentials: dict[str, str] = field(repr=False)
    identities: tuple[Identity, ...] = ()
    prefix: str = "vc/v1"


def _problem_chars(name: str) -> list[str]:
    found: list[str] = []
    for ch in name:
        if ch in _CHARS_FORBIDDEN:
            label = _CHARS_FORBIDDEN[ch]
        elif ch.isspace() or unicodedata.category(ch) == "Cc":
            label = f"U+{ord(ch):04X}"
        else:
            continue
        if label not in found:
            found.append(label)
    return found


def _check_name(name: str, *, what: Text) -> Text | None:
    if not name:
        return tr("{what}：用户名为空", "{what}: the username is empty", what=what)
    bad = _problem_chars(name)
    if not bad:
        return None
    return tr(
        "{what}：用户名 {name!r} 含有不允许的字符 {chars}（MQTT 通配符 + #、主题分隔符 /、"
        "冒号、空白或控制字符会让 ACL 失效），请改用字母、数字、- _ .",
        "{what}: username {name!r} contains {chars} (MQTT wildcards + #, the topic separator /, "
        "':', whitespace or control characters would break the ACL); use letters, digits, - _ .",
        what=what,
        name=name,
        chars=" ".join(bad),
    )


def identities(registry: Registry, *, dispatcher_user: str) -> list[Identity]:
    """The dispatcher plus one identity per led/speaker endpoint; ConfigError on unsafe names."""
    found: list[tuple[Identity, Text]] = [
        (Identity(dispatcher_user, "dispatcher", None), tr("调度程序", "the dispatcher"))
    ]
    # Disabled boards keep their login: a board back from repair reconnects without reprovisioning.
    for ep_id, ep in registry.endpoints.items():
        if isinstance(ep, LedEndpoint | SpeakerEndpoint):
            what = tr("设备 {ep}（{kind}）", "device {ep} ({kind})", ep=ep_id, kind=ep.kind)
            found.append((Identity(ep.device_id, "device", ep.device_id), what))
    problems: list[Text] = []
    first: dict[str, Text] = {}
    for ident, what in found:
        problem = _check_name(ident.username, what=what)
        if problem is not None:
            problems.append(problem)
        elif ident.username in first:
            problems.append(
                tr(
                    "{what}：用户名 {name!r} 与 {other} 重复，每台设备必须有自己的 device_id",
                    "{what}: username {name!r} is already used by {other}; every device needs "
                    "its own device_id",
                    what=what,
                    name=ident.username,
                    other=first[ident.username],
                )
            )
        else:
            first[ident.username] = what
    if problems:
        raise ConfigError(
            tr("无法生成 MQTT 账号", "cannot generate the MQTT identities"), details=problems
        )
    return [ident for ident, _ in found]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unsplittable(value: str) -> bool:
    return bool(value) and not any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value)


def _conf_path(path: Path, *, what: str) -> str:
    text = str(path.resolve())
    if not _unsplittable(text):
        # mosquitto.conf splits values at whitespace: such a path would be cut short.
        raise ConfigError(
            tr(
                "{what} 路径 {p} 含有空白或控制字符，mosquitto 无法读取",
                "{what} path {p} contains whitespace or control characters; mosquitto cannot "
                "use it",
                what=what,
                p=text,
            )
        )
    return text


def _mosquitto_conf(
    *,
    data_dir: str,
    listen_host: str,
    port: int,
    tls: TlsOptions | None,
    max_queued: int,
    devices: int,
) -> str:
    force_plain = not _is_loopback(listen_host)
    lines = [
        "# Generated by `villagecast mqtt config`; regenerate instead of editing by hand.",
        "# No secrets here: passwd holds only salted hashes; the plaintext passwords are in",
        f"# {CREDENTIALS_FILE} (mode 600), which mosquitto never reads.",
        "",
        "# One password file and one ACL for every listener.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {data_dir}/passwd",
        f"acl_file {data_dir}/acl",
        "",
        "# Plain MQTT listener.",
        f"listener {port} {listen_host}",
    ]
    if force_plain:
        lines += [
            "# Reachable from the network: the client id is replaced by the username, so a",
            "# device cannot use another device's client id to evict it or take over its session.",
            "use_username_as_clientid true",
        ]
    else:
        lines += [
            "# Loopback only, for the dispatcher on this machine: its publishers and ack listener",
            "# share one username with different client ids, which use_username_as_clientid",
            "# would make evict each other. Devices must still use client id == username.",
        ]
    if tls is not None:
        lines += [
            "",
            "# TLS listener for devices: they verify the broker against the CA they were given.",
            f"listener {tls.port}" + (f" {tls.host}" if tls.host else ""),
            f"cafile {_conf_path(tls.cafile, what='cafile')}",
            f"certfile {_conf_path(tls.certfile, what='certfile')}",
            f"keyfile {_conf_path(tls.keyfile, what='keyfile')}",
            "tls_version tlsv1.2",
            f"require_certificate {'true' if tls.require_certificate else 'false'}",
            "# Devices log in as themselves; the client id is forced to the username.",
            "use_username_as_clientid true",
        ]
    lines += [
        "",
        "# Sessions and commands queued for offline devices survive a broker restart. mosquitto",
        "# writes them only at shutdown and every autosave_interval seconds: the default 1800 s",
        "# means a crash or power cut loses up to 30 minutes of queued commands and sessions.",
        "# The dispatcher's database and sweeper re-send anything unacked, but 60 s keeps the gap",
        "# small.",
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 60",
        "",
        "# At most this many QoS 1 messages wait for one client (offline, or behind its",
        "# in-flight window). Beyond it mosquitto DROPS the NEWEST silently: the publisher",
        "# still gets its PUBACK, and an emergency sent to a device with a full queue is lost.",
        "# The dispatcher notices (no ack) and re-sends. Its own ack listener may have to hold",
        "# one ack per device after a county-wide burst, so the limit is mosquitto's default",
        f"# of 1000 or 2 x the number of devices ({devices}), whichever is larger.",
        f"max_queued_messages {max_queued}",
        "# Unacknowledged QoS 1 messages in flight to one client; 1 would guarantee order but",
        "# throttle the stream of acks to the dispatcher (devices order by issued_at instead).",
        "max_inflight_messages 20",
        "# Send small packets at once: the dispatcher pipelines a chunk of commands and waits",
        "# for their PUBACKs together, and with Nagle's algorithm each burst of PUBACKs waits",
        "# for the publisher's delayed ACK (about 40 ms on Linux).",
        "set_tcp_nodelay true",
        "# Retained messages carry device state (online/offline); commands are never retained.",
        "retain_available true",
        "# A device silent for two weeks loses its session and anything queued for it; the",
        "# dispatcher re-sends what is still valid and unacked when it comes back.",
        "persistent_client_expiration 14d",
        "",
        "# Under systemd, stdout goes to the journal (journalctl -u <unit>).",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        "",
    ]
    return "\n".join(lines)


def _acl(prefix: str, dispatcher_user: str, devices: list[Identity]) -> str:
    dev = f"{prefix}/dev"
    lines = [
        "# Generated by `villagecast mqtt config`. Anything not granted here is denied.",
        "",
        "# The dispatcher: sends every command, reads every ack and state; it cannot forge",
        "# device messages. The deny line stops the patterns below granting it a device's",
        "# topics under its own name (deny lines are checked first).",
        f"user {dispatcher_user}",
        f"topic deny {dev}/{dispatcher_user}/#",
        f"topic write {dev}/+/cmd",
        f"topic read {dev}/+/ack",
        f"topic read {dev}/+/state",
        "",
        f"# Devices ({len(devices)}): %u is the username, which is the device_id. Each reads",
        "# only its own commands and writes only its own ack and state (and Last Will).",
        f"pattern read {dev}/%u/cmd",
        f"pattern write {dev}/%u/ack",
        f"pattern write {dev}/%u/state",
        "",
    ]
    return "\n".join(lines)


def generate(
    registry: Registry,
    *,
    prefix: str = "vc/v1",
    listen_host: str = "127.0.0.1",
    port: int = 1883,
    data_dir: Path,
    dispatcher_user: str = "villagecast-dispatcher",
    existing_credentials: Mapping[str, str] | None = None,
    tls: TlsOptions | None = None,
) -> GeneratedConfig:
    """Build mosquitto.conf, passwd and acl for ``registry``; passwords kept where given.

    ``data_dir`` is where the broker will find passwd and acl and keep mosquitto.db: write
    the files there (or copy them there) before starting mosquitto.
    """
    idents = identities(registry, dispatcher_user=dispatcher_user)
    bad_prefix = [p for p in prefix.split("/") if not p or _problem_chars(p)]
    if bad_prefix:
        raise ConfigError(
            tr(
                "MQTT 主题前缀 {p!r} 无效：各级不能为空，不能含 + # 或空白",
                "MQTT topic prefix {p!r} is invalid: levels must be non-empty, without + # or "
                "whitespace",
                p=prefix,
            )
        )
    listeners = [(listen_host, port)] + ([(tls.host or "*", tls.port)] if tls else [])
    for host, number in listeners:
        if not _unsplittable(host) or not 0 < number < 65536:
            raise ConfigError(
                tr(
                    "MQTT 监听地址 {h} 端口 {n} 无效",
                    "invalid MQTT listener address {h} port {n}",
                    h=repr(host),
                    n=number,
                )
            )
    existing = dict(existing_credentials or {})
    credentials: dict[str, str] = {}
    for ident in idents:
        old = existing.get(ident.username)
        # Kept passwords mean regenerating (a new village, a new board) does not
        # force every device in the county to be reprovisioned.
        credentials[ident.username] = old if old else secrets.token_urlsafe(24)
    passwd = "".join(
        f"{ident.username}:{mosquitto_password_hash(credentials[ident.username])}\n"
        for ident in idents
    )
    devices = [i for i in idents if i.role == "device"]
    conf = _mosquitto_conf(
        data_dir=_conf_path(data_dir, what="data_dir"),
        listen_host=listen_host,
        port=port,
        tls=tls,
        max_queued=max(1000, 2 * len(devices)),
        devices=len(devices),
    )
    return GeneratedConfig(
        files={
            "mosquitto.conf": conf,
            "passwd": passwd,
            "acl": _acl(prefix, dispatcher_user, devices),
        },
        credentials=credentials,
        identities=tuple(idents),
        prefix=prefix,
    )


def _credentials_json(config: GeneratedConfig) -> str:
    dev = f"{config.prefix}/dev"
    doc = {
        "version": 1,
        "warning": "plaintext MQTT passwords: keep private (mode 600), never commit or print",
        "prefix": config.prefix,
        "credentials": config.credentials,
        "identities": [
            {
                "username": i.username,
                "role": i.role,
                **(
                    {
                        "device_id": i.device_id,
                        "client_id": i.username,
                        "subscribe": [f"{dev}/{i.username}/cmd"],
                        "publish": [f"{dev}/{i.username}/ack", f"{dev}/{i.username}/state"],
                    }
                    if i.role == "device"
                    else {
                        "publish": [f"{dev}/+/cmd"],
                        "subscribe": [f"{dev}/+/ack", f"{dev}/+/state"],
                    }
                ),
            }
            for i in config.identities
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def _write_private(path: Path, text: str) -> None:
    # Created 0600 before any byte is written, then renamed: no window with wider
    # permissions, and a broker reloading on SIGHUP never reads half a file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write(config: GeneratedConfig, out_dir: Path) -> list[Path]:
    """Write the broker files and credentials.json, all mode 0600, in a 0700 directory."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    out_dir.chmod(0o700)
    contents = {**config.files, CREDENTIALS_FILE: _credentials_json(config)}
    written: list[Path] = []
    for name, text in contents.items():
        path = out_dir / name
        _write_private(path, text)
        written.append(path)
    return written


def load_credentials(path: Path) -> dict[str, str]:
    """Username -> password from a credentials.json written by :func:`write` (for regeneration)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        creds = doc["credentials"]
        if not isinstance(creds, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in creds.items()
        ):
            raise TypeError("credentials must map usernames to passwords")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            tr(
                "无法读取 MQTT 账号文件 {p}：{err}",
                "cannot read the MQTT credentials file {p}: {err}",
                p=str(path),
                err=type(exc).__name__,
            )
        ) from exc
    return dict(creds)
