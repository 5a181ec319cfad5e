"""Secrets never leak: the whole demo, run with distinctive secrets, leaves none anywhere.

Every secret the demo uses is set to a value that cannot appear by chance (WeCom webhook
keys, official-account AppSecrets, TV ingest HMAC secrets, an MQTT password), the WeChat
stand-in hands out access tokens that all start with ``STANDIN-TOKEN-``, and the device
signing key is read back from the keys directory. None of them may appear in the demo's
output, in any file the demo leaves under its home (logs, crash log, feeds, audio, device
state, both databases byte for byte), in a full dump of every table of both databases, or
in what the CLI and the township dashboard show about the notices afterwards. The demo
must also really have used them, or the test would prove nothing.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from typer.testing import CliRunner

from cli import app
from content_queue.accounts import Accounts, Role
from content_queue.registry import (
    LedEndpoint,
    OfficialAccountEndpoint,
    SpeakerEndpoint,
    TvFeedEndpoint,
    WecomGroupEndpoint,
    load_registry,
)
from content_queue.settings import Settings, reset_settings
from content_queue.store import Store
from dashboard.server import start_in_thread
from refdevice.wechat_mp_standin import TOKEN_PREFIX
from tests.conftest import REPO, _free_port


def _distinctive_secrets() -> dict[str, str]:
    """Environment variable -> a value no program could print by accident."""
    registry = load_registry(REPO / "devices.yaml")
    env: dict[str, str] = {}
    for ep in registry.endpoints.values():
        if isinstance(ep, WecomGroupEndpoint):
            env[ep.webhook_key_env] = f"SECRET-WECOM-{uuid.uuid4()}"  # WeCom keys are UUIDs
        elif isinstance(ep, OfficialAccountEndpoint):
            env[ep.app_secret_env] = f"SECRET-OA-{uuid.uuid4().hex}"  # AppSecrets: 32 hex
        elif isinstance(ep, TvFeedEndpoint) and ep.ingest_secret_env:
            env[ep.ingest_secret_env] = f"SECRET-TV-{uuid.uuid4().hex}"
    kinds = {type(ep) for ep in registry.endpoints.values()}
    assert {WecomGroupEndpoint, OfficialAccountEndpoint, TvFeedEndpoint} <= kinds
    # The embedded broker takes anonymous clients on loopback, so the dispatcher never
    # sends this; set anyway, it must not be echoed (settings dumps, diagnostics).
    env["VILLAGECAST_MQTT_PASSWORD"] = f"SECRET-MQTT-{uuid.uuid4().hex}"
    return env


def _private_key_forms(keys_dir: Path) -> dict[str, bytes]:
    """Every way the device signing key's private bytes could be written out."""
    forms: dict[str, bytes] = {}
    pems = sorted(keys_dir.glob("*.pem"))
    assert pems, "the demo made no signing key"
    for pem in pems:
        key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        forms[f"{pem.name} raw"] = raw
        forms[f"{pem.name} hex"] = raw.hex().encode()
        forms[f"{pem.name} HEX"] = raw.hex().upper().encode()
        forms[f"{pem.name} base64"] = base64.b64encode(raw).rstrip(b"=")
        forms[f"{pem.name} base64url"] = base64.urlsafe_b64encode(raw).rstrip(b"=")
        forms[f"{pem.name} pkcs8 der hex"] = der.hex().encode()
        forms[f"{pem.name} pem body"] = base64.b64encode(der).rstrip(b"=")
    return forms


def _dump(path: Path) -> str:
    """``sqlite3`` iterdump: every table, every row (blobs as X'..' hex)."""
    with sqlite3.connect(path) as db:
        return "\n".join(db.iterdump())


def _dashboard_pages(home: Path) -> list[str]:
    """Every page, API answer and export the township dashboard gives a county admin."""
    settings = Settings(
        home=home, devices=REPO / "devices.yaml", web_port=0, feed_port=0, lang="zh"
    )
    store = Store(settings.resolved_database_url)
    registry = load_registry(settings.devices)
    hasher = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    accounts = Accounts(store, hasher=hasher)
    accounts.add_user(
        username="county", password="correct-horse-9", role=Role.COUNTY_ADMIN, registry=registry
    )
    server = start_in_thread(settings, store, lambda: registry, accounts=accounts)
    pages: list[str] = []
    try:
        with httpx.Client(base_url=server.web_url, timeout=20) as web:
            login = {"username": "county", "password": "correct-horse-9"}
            assert web.post("/api/v1/login", json=login).status_code == 200
            devices = [
                ep.device_id
                for ep in registry.endpoints.values()
                if isinstance(ep, LedEndpoint | SpeakerEndpoint)
            ]
            paths = [
                "/overview",
                "/devices",
                "/failures",
                "/export",
                "/export/deliveries.csv",
                "/api/v1/overview",
                "/api/v1/devices",
                "/api/v1/failures",
                "/metrics",
                *(f"/notices/{n}" for n in range(1, 5)),
                *(f"/api/v1/notices/{n}" for n in range(1, 5)),
                *(f"/devices/{d}" for d in devices[:2]),
                *(f"/feeds/{v}.atom" for v in registry.villages),
            ]
            for path in paths:
                page = web.get(path)
                assert page.status_code == 200, (path, page.text[:300])
                pages.append(page.text)
    finally:
        server.shutdown()
        server.server_close()
    assert any("寒潮蓝色预警" in p for p in pages)
    return pages


def _leaks(where: str, data: bytes, needles: dict[str, bytes]) -> list[str]:
    return [f"{name} in {where}" for name, needle in needles.items() if needle in data]


@pytest.mark.slow
def test_a_whole_demo_leaks_no_secret(tmp_path: Path) -> None:
    secrets = _distinctive_secrets()
    home = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VILLAGECAST_")}
    env.update(secrets, VILLAGECAST_LANG="zh", VILLAGECAST_EMBEDDED_MQTT_PORT=str(_free_port()))
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--home", str(home)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output.decode("utf-8", "replace")[-3000:]

    # The demo used every secret: robots posted, accounts published with fetched tokens,
    # the TV platform's ingest checked the HMAC, devices verified signed commands.
    with sqlite3.connect(home / "villagecast.sqlite") as db:
        statuses = dict(
            db.execute(
                "SELECT kind, group_concat(DISTINCT status) FROM deliveries GROUP BY kind"
            ).fetchall()
        )
        # A push is delivered at once only when the ingest stand-in accepted its HMAC.
        pushed = db.execute(
            "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
            "WHERE d.endpoint_id = 'dongcheng-liuzhuang-tv' AND a.outcome = 'delivered'"
        ).fetchone()[0]
        tokens = db.execute(
            "SELECT value FROM kv_entries WHERE key LIKE 'wechat:%access_token'"
        ).fetchall()
    assert {"wecom_group", "wechat_official_account", "tv_feed", "led", "speaker"} <= set(statuses)
    assert set(statuses.values()) == {"delivered"}, statuses
    assert pushed == 4
    # The access tokens are cached for every worker, sealed with a key derived from the
    # account's AppSecret (channels/_oa_client.py): a copy of the database holds none.
    assert len(tokens) == 2
    assert all(value.startswith("sealed:v1:") for (value,) in tokens)
    worker_log = (home / "logs" / "worker.log").read_text(encoding="utf-8")
    # httpx logs each request line: the webhook key in it is masked, not dropped silently.
    assert "/cgi-bin/webhook/send?key=*** " in worker_log

    needles = {name: value.encode() for name, value in secrets.items()}
    needles["access token"] = TOKEN_PREFIX.encode()
    needles |= _private_key_forms(home / "keys")

    # What the CLI shows about every notice and delivery, errors included.
    runner = CliRunner()
    cli_env = {"VILLAGECAST_HOME": str(home), "VILLAGECAST_DEVICES": str(REPO / "devices.yaml")}
    shown = []
    try:
        for args in (
            ["notice", "list", "--json"],
            *(["notice", "show", str(n), "--json"] for n in range(1, 5)),
            ["audit", "show"],
            ["status", "--json"],
        ):
            result = runner.invoke(app, args, env=cli_env)
            assert result.exit_code == 0, (args, result.output)
            shown.append(result.output)
    finally:
        reset_settings()
    assert "寒潮蓝色预警" in shown[0]
    shown += _dashboard_pages(home)

    found = _leaks("demo output", output, needles)
    found += _leaks("CLI output", "\n".join(shown).encode(), needles)
    scanned = []
    for path in sorted(home.rglob("*")):
        if not path.is_file() or path.relative_to(home).parts[0] == "keys":
            continue
        scanned.append(path.relative_to(home).as_posix())
        found += _leaks(str(path.relative_to(home)), path.read_bytes(), needles)
    for db_file in ("villagecast.sqlite", "broker.sqlite"):
        dump = _dump(home / db_file).encode()
        # Blobs are dumped as upper-case hex.
        found += _leaks(f"{db_file} dump", dump, needles)
        found += _leaks(f"{db_file} dump", dump.lower(), needles)
    assert not found, found
    # Logs, feeds and the databases were all there to be searched.
    assert "logs/worker.log" in scanned
    assert any(p.startswith("feeds/") and p.endswith(".atom") for p in scanned)
    assert "villagecast.sqlite" in scanned


def test_the_crash_log_masks_keys_and_tokens_in_urls(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error's traceback goes to logs/crash.log: a request URL in it (an
    HTTP client's exception message) must not carry the webhook key or the token there."""
    import content_queue.store as store_mod

    key, token = f"SECRET-WECOM-{uuid.uuid4()}", f"{TOKEN_PREFIX}{uuid.uuid4().hex}"

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError(
            f"POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={key} failed; "
            f"GET https://api.weixin.qq.com/cgi-bin/draft/add?access_token={token} failed"
        )

    monkeypatch.setattr(store_mod.Store, "notices", boom)
    result = CliRunner().invoke(app, ["notice", "list"])
    assert result.exit_code == 70
    crash = (home / "logs" / "crash.log").read_text(encoding="utf-8")
    assert "RuntimeError: POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***" in crash
    assert "draft/add?access_token=*** failed" in crash
    assert key not in crash + result.output and token not in crash + result.output
