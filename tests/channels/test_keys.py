"""Signing keys on disk: init, load, rotation with overlap, public key export."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from channels.keys import Keyring, SigningKey, key_id_for, load_public_keyring
from channels.protocol import ReplayGuard, encode, sign_command, verify_command
from content_queue.errors import ConfigError

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def accepts(keys: dict[str, Ed25519PublicKey], key: SigningKey, when: datetime) -> bool:
    issued = int(when.timestamp())
    command = sign_command(
        key=key,
        command_id="vc-1",
        device="led-1",
        notice=1,
        revision=1,
        delivery=1,
        kind="led.show",
        priority="routine",
        issued_at=issued,
        expires_at=issued + 600,
        body={"title": "t"},
    )
    result = verify_command(
        encode(command),
        device_id="led-1",
        keyring=keys,
        now=issued,
        max_skew=300,
        guard=ReplayGuard(),
    )
    return result == command


def test_init_writes_private_files(tmp_path: Path) -> None:
    directory = tmp_path / "home" / "keys"
    keyring = Keyring.init(directory)
    key = keyring.active()
    raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key.key_id == hashlib.sha256(raw).hexdigest()[:16] == key_id_for(key.public)
    pem = directory / f"{key.key_id}.pem"
    assert mode(directory) == 0o700
    assert mode(pem) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert json.loads((directory / "keyring.json").read_text())["active"] == key.key_id


def test_load_round_trip(tmp_path: Path) -> None:
    created = Keyring.init(tmp_path / "keys")
    loaded = Keyring.load(tmp_path / "keys")
    assert loaded.active().key_id == created.active().key_id
    assert accepts(created.public_keys(), loaded.active(), T0)


def test_load_without_keys_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Keyring.load(tmp_path / "nowhere")
    assert "villagecast keys init" in info.value.render("zh")
    assert "villagecast keys init" in info.value.render("en")


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = Keyring.init(tmp_path / "keys").active()
    with pytest.raises(ConfigError) as info:
        Keyring.init(tmp_path / "keys")
    assert "--force" in info.value.render("en") and "--force" in info.value.render("zh")
    assert Keyring.load(tmp_path / "keys").active().key_id == first.key_id
    second = Keyring.init(tmp_path / "keys", force=True).active()
    assert second.key_id != first.key_id
    assert not (tmp_path / "keys" / f"{first.key_id}.pem").exists()
    assert Keyring.load(tmp_path / "keys").active().key_id == second.key_id


def test_rotate_keeps_the_old_key_verifiable_during_the_overlap(tmp_path: Path) -> None:
    keyring = Keyring.init(tmp_path / "keys")
    old = keyring.active()
    new = keyring.rotate(overlap_days=30, now=T0)
    assert keyring.active() == new != old
    assert not (tmp_path / "keys" / f"{old.key_id}.pem").exists()  # nothing signs with it
    reloaded = Keyring.load(tmp_path / "keys")
    assert reloaded.active().key_id == new.key_id
    during = T0 + timedelta(days=29)
    after = T0 + timedelta(days=30)
    assert set(reloaded.public_keys(now=during)) == {old.key_id, new.key_id}
    assert set(reloaded.public_keys(now=after)) == {new.key_id}
    assert accepts(reloaded.public_keys(now=during), old, during)
    assert not accepts(reloaded.public_keys(now=after), old, after)
    assert accepts(reloaded.public_keys(now=after), new, after)


def test_rotating_again_drops_keys_past_their_overlap(tmp_path: Path) -> None:
    keyring = Keyring.init(tmp_path / "keys")
    first = keyring.active()
    second = keyring.rotate(overlap_days=1, now=T0)
    third = keyring.rotate(overlap_days=7, now=T0 + timedelta(days=2))
    stored = json.loads((tmp_path / "keys" / "keyring.json").read_text())
    assert [k["key_id"] for k in stored["keys"]] == [second.key_id, third.key_id]
    assert first.key_id not in keyring.public_keys(now=T0 + timedelta(days=2))


def test_export_and_import_public_keys(tmp_path: Path) -> None:
    keyring = Keyring.init(tmp_path / "keys")
    old = keyring.active()
    new = keyring.rotate(overlap_days=30, now=T0)
    exported = json.loads(json.dumps(keyring.export_public(now=T0)))
    assert [k["key_id"] for k in exported["keys"]] == [old.key_id, new.key_id]
    assert exported["keys"][0]["not_after"] == "2026-03-31T08:00:00Z"
    assert exported["keys"][1]["not_after"] is None
    device_keys = load_public_keyring(exported, now=T0)
    assert set(device_keys) == {old.key_id, new.key_id}
    assert accepts(device_keys, old, T0)
    # A device provisioned during the overlap stops trusting the old key after it.
    later = load_public_keyring(exported, now=T0 + timedelta(days=31))
    assert set(later) == {new.key_id}


def test_nothing_secret_leaves_the_key_file(tmp_path: Path) -> None:
    keyring = Keyring.init(tmp_path / "keys")
    key = keyring.active()
    secret = key.private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    pem = (tmp_path / "keys" / f"{key.key_id}.pem").read_text()
    pem_body = "".join(pem.splitlines()[1:-1])
    for text in (
        repr(key),
        json.dumps(keyring.export_public()),
        (tmp_path / "keys" / "keyring.json").read_text(),
    ):
        assert pem_body not in text and secret.hex() not in text
    assert repr(key) == f"SigningKey(key_id='{key.key_id}')"


def test_import_refuses_a_key_id_that_does_not_match(tmp_path: Path) -> None:
    exported = Keyring.init(tmp_path / "keys").export_public()
    exported["keys"][0]["key_id"] = "0" * 16
    with pytest.raises(ConfigError):
        load_public_keyring(exported)
    with pytest.raises(ConfigError):
        load_public_keyring({"keys": [{"key_id": "x", "public_key": "not base64!"}]})
    with pytest.raises(ConfigError):
        load_public_keyring({})


def test_load_refuses_a_private_key_others_can_read(tmp_path: Path) -> None:
    key = Keyring.init(tmp_path / "keys").active()
    pem = tmp_path / "keys" / f"{key.key_id}.pem"
    pem.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        Keyring.load(tmp_path / "keys")
    assert "chmod 600" in info.value.render("en")


def test_load_reports_a_damaged_keyring(tmp_path: Path) -> None:
    Keyring.init(tmp_path / "keys")
    (tmp_path / "keys" / "keyring.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError):
        Keyring.load(tmp_path / "keys")
