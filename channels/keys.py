"""Ed25519 signing keys for device commands, kept on disk under ``settings.keys_dir``."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from content_queue.errors import ConfigError
from content_queue.i18n import tr

__all__ = ["Keyring", "SigningKey", "key_id_for", "load_public_keyring", "public_key_b64"]

KEYRING_FILE = "keyring.json"
_FORMAT = 1


def public_key_b64(public: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as base64url without padding (how devices are given it)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def key_id_for(public: Ed25519PublicKey) -> str:
    """First 16 hex characters of sha256 over the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _decode_public(text: str) -> Ed25519PublicKey:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return moment


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


@dataclass(frozen=True)
class SigningKey:
    """The private key the dispatcher signs with; never logged, never sent anywhere."""

    key_id: str
    private: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


@dataclass(frozen=True)
class _Entry:
    key_id: str
    public: Ed25519PublicKey
    created_at: datetime
    not_after: datetime | None  # None while active; set when a rotation retires the key

    def valid(self, now: datetime) -> bool:
        return self.not_after is None or now < self.not_after


class Keyring:
    """The active signing key plus retired public keys devices still accept for a while.

    Layout (directory mode 0700)::

        keyring.json       public keys, which one is active, when retired ones stop
        <key_id>.pem       the active private key, PKCS8 PEM, mode 0600

    A rotation deletes the old private key at once: nothing signs with it again, and
    only its public half is needed (by devices, until ``not_after``).
    """

    def __init__(self, directory: Path, *, active: SigningKey, entries: list[_Entry]) -> None:
        self.directory = directory
        self._active = active
        self._entries = entries

    # -- loading and creating -----------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> Keyring:
        path = directory / KEYRING_FILE
        if not path.is_file():
            raise ConfigError(
                tr(
                    "找不到签名密钥（{d}）：请先运行 `villagecast keys init`",
                    "no signing keys in {d}: run `villagecast keys init` first",
                    d=str(directory),
                )
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT:
                raise ValueError("unknown keyring format")
            entries = [
                _Entry(
                    key_id=str(item["key_id"]),
                    public=_decode_public(str(item["public_key"])),
                    created_at=_parse_iso(item["created_at"]) or datetime.now(UTC),
                    not_after=_parse_iso(item.get("not_after")),
                )
                for item in data["keys"]
            ]
            active_id = str(data["active"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                tr(
                    "密钥文件 {p} 已损坏，无法读取",
                    "the keyring {p} is damaged and cannot be read",
                    p=str(path),
                )
            ) from exc
        for entry in entries:
            if entry.key_id != key_id_for(entry.public):
                raise ConfigError(
                    tr(
                        "密钥文件 {p} 中的密钥编号 {k} 与公钥不符",
                        "key id {k} in {p} does not match its public key",
                        p=str(path),
                        k=entry.key_id,
                    )
                )
        active = _load_private(directory, active_id)
        if active_id not in {e.key_id for e in entries}:
            raise ConfigError(
                tr(
                    "密钥文件 {p} 没有列出当前密钥 {k}",
                    "{p} does not list the active key {k}",
                    p=str(path),
                    k=active_id,
                )
            )
        return cls(directory, active=active, entries=entries)

    @classmethod
    def init(cls, directory: Path, *, force: bool = False) -> Keyring:
        path = directory / KEYRING_FILE
        if path.exists() and not force:
            raise ConfigError(
                tr(
                    "{d} 已有签名密钥，不会覆盖"
                    "（确实要重新生成请加 --force，之后所有设备都要重新下发公钥）",
                    "signing keys already exist in {d}; not overwriting them (use --force to "
                    "replace them, then give every device the new public key)",
                    d=str(directory),
                )
            )
        old_pems = sorted(directory.glob("*.pem")) if path.exists() else []
        _ensure_private_dir(directory)
        key = _new_key(directory)
        now = datetime.now(UTC).replace(microsecond=0)
        keyring = cls(
            directory,
            active=key,
            entries=[_Entry(key.key_id, key.public, created_at=now, not_after=None)],
        )
        keyring._save()
        for pem in old_pems:
            if pem.stem != key.key_id:
                pem.unlink(missing_ok=True)
        return keyring

    # -- using --------------------------------------------------------------------------

    def active(self) -> SigningKey:
        return self._active

    def rotate(self, *, overlap_days: int = 30, now: datetime | None = None) -> SigningKey:
        """Make a new active key; the old one stays verifiable until now + overlap_days."""
        if overlap_days < 0:
            raise ValueError("overlap_days must not be negative")
        moment = _now(now).replace(microsecond=0)
        retired = self._active
        new = _new_key(self.directory)
        entries = [
            _Entry(e.key_id, e.public, e.created_at, moment + timedelta(days=overlap_days))
            if e.key_id == retired.key_id
            else e
            for e in self._entries
            if e.valid(moment)
        ]
        entries.append(_Entry(new.key_id, new.public, created_at=moment, not_after=None))
        self._entries = entries
        self._active = new
        self._save()
        (self.directory / f"{retired.key_id}.pem").unlink(missing_ok=True)
        return new

    def public_keys(self, *, now: datetime | None = None) -> dict[str, Ed25519PublicKey]:
        moment = _now(now)
        return {e.key_id: e.public for e in self._entries if e.valid(moment)}

    def export_public(self, *, now: datetime | None = None) -> dict[str, Any]:
        moment = _now(now)
        return {
            "keys": [
                {
                    "key_id": e.key_id,
                    "public_key": public_key_b64(e.public),
                    "not_after": _iso(e.not_after),
                }
                for e in self._entries
                if e.valid(moment)
            ]
        }

    def _save(self) -> None:
        data = {
            "format": _FORMAT,
            "active": self._active.key_id,
            "keys": [
                {
                    "key_id": e.key_id,
                    "public_key": public_key_b64(e.public),
                    "created_at": _iso(e.created_at),
                    "not_after": _iso(e.not_after),
                }
                for e in self._entries
            ],
        }
        _atomic_write(self.directory / KEYRING_FILE, json.dumps(data, indent=2) + "\n")


def load_public_keyring(
    data: Mapping[str, Any], *, now: datetime | None = None
) -> dict[str, Ed25519PublicKey]:
    """Read :meth:`Keyring.export_public` output on a device; keys past not_after are left out."""
    moment = _now(now)
    keys: dict[str, Ed25519PublicKey] = {}
    try:
        for item in data["keys"]:
            public = _decode_public(str(item["public_key"]))
            key_id = str(item["key_id"])
            if key_id != key_id_for(public):
                raise ValueError(f"key id {key_id} does not match its public key")
            not_after = _parse_iso(item.get("not_after"))
            if not_after is None or moment < not_after:
                keys[key_id] = public
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            tr(
                "公钥文件格式不对：应为 `villagecast keys export` 的输出",
                "the public key file is not valid: expected the output of "
                "`villagecast keys export`",
            )
        ) from exc
    return keys


# -- files ------------------------------------------------------------------------------


def _ensure_private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def _new_key(directory: Path) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    key = SigningKey(key_id_for(private.public_key()), private)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / f"{key.key_id}.pem"
    # Created 0600 from the first byte: a chmod after writing would leave a window.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _load_private(directory: Path, key_id: str) -> SigningKey:
    path = directory / f"{key_id}.pem"
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                tr(
                    "私钥文件 {p} 其他用户也能读取，请执行 chmod 600 {p}",
                    "the private key {p} is readable by other users; run chmod 600 {p}",
                    p=str(path),
                )
            )
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(
            tr(
                "找不到当前签名私钥 {p}：请用 `villagecast keys init --force` 重新生成",
                "the active private key {p} is missing; recreate keys with "
                "`villagecast keys init --force`",
                p=str(path),
            )
        ) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            tr("私钥文件 {p} 无法读取", "the private key {p} cannot be read", p=str(path))
        ) from exc
    if not isinstance(private, Ed25519PrivateKey) or key_id_for(private.public_key()) != key_id:
        raise ConfigError(
            tr(
                "私钥文件 {p} 与密钥编号不符",
                "the private key {p} does not match its key id",
                p=str(path),
            )
        )
    return SigningKey(key_id, private)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
