"""Backups of the store and the signing keys, taken while workers run, and their restore.

A backup is one gzip'd tar file, written mode 600 (it holds the private signing key)::

    manifest.json      format, engine, schema revision, notice count, audit head and count
    store.sqlite       SQLite: a page-for-page copy made with SQLite's online backup API
    store.pgdump       PostgreSQL: ``pg_dump --format=custom`` of one exported snapshot
    keys/keyring.json  the key ring (public keys, which is active)
    keys/<id>.pem      the active private key (mode 600 kept)

Both copies are consistent while workers write: SQLite's backup API copies one read
transaction's view; on PostgreSQL the manifest's counts and audit head are read in a
REPEATABLE READ transaction whose snapshot pg_dump then dumps (``--snapshot``). A restore
goes into a fresh database only, upgrades it to this version's schema, and checks that the
audit chain verifies and ends at the head the manifest recorded.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from content_queue.audit import verify_chain
from content_queue.db import AuditEntry, Notice
from content_queue.dbadmin import engine_name, redact_url, schema_status, upgrade
from content_queue.errors import ConfigError, StoreError
from content_queue.i18n import tr

__all__ = ["BACKUP_FORMAT", "BackupInfo", "create_backup", "read_backup", "restore_backup"]

BACKUP_FORMAT = 1
_KEYS = "keys/"


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    engine: str
    revision: tuple[str, ...]
    created_at: datetime
    notices: int
    audit_entries: int
    audit_head: str
    key_files: tuple[str, ...]

    def manifest(self) -> dict[str, Any]:
        return {
            "format": BACKUP_FORMAT,
            "engine": self.engine,
            "revision": list(self.revision),
            "created_at": self.created_at.isoformat(),
            "notices": self.notices,
            "audit_entries": self.audit_entries,
            "audit_head": self.audit_head,
            "key_files": list(self.key_files),
        }

    @classmethod
    def of(cls, path: Path, data: Mapping[str, Any]) -> BackupInfo:
        return cls(
            path=path,
            engine=str(data["engine"]),
            revision=tuple(data["revision"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            notices=int(data["notices"]),
            audit_entries=int(data["audit_entries"]),
            audit_head=str(data["audit_head"]),
            key_files=tuple(data["key_files"]),
        )


def _facts(s: Session) -> tuple[int, int, str]:
    notices = int(s.scalar(select(func.count()).select_from(Notice)) or 0)
    report = verify_chain(
        s.scalars(select(AuditEntry).order_by(AuditEntry.id).execution_options(yield_per=1000))
    )
    return notices, report.count, report.head


def _revision(conn: Any) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext

    if not inspect(conn).has_table("alembic_version"):
        return ()
    return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))


def _tool(name: str) -> str:
    """pg_dump / pg_restore: on PATH, or Debian's per-version directory (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return str(candidates[-1])
    raise ConfigError(
        tr(
            "找不到 {t}：请安装 Debian 软件包 postgresql-client（版本不低于服务器）",
            "{t} is missing: install the Debian package postgresql-client (the server's "
            "version or newer)",
            t=name,
        )
    )


def _libpq(url: URL) -> tuple[list[str], dict[str, str]]:
    """Connection options for pg_dump/pg_restore; the password goes in the environment,
    never on a command line other users can read."""
    args = []
    if url.host:
        args += ["--host", url.host]
    if url.port:
        args += ["--port", str(url.port)]
    if url.username:
        args += ["--username", url.username]
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return args, env


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StoreError(
            tr(
                "{w} 失败：{e}",
                "{w} failed: {e}",
                w=what,
                e=(done.stderr.strip().splitlines() or ["?"])[-1],
            )
        )


@contextmanager
def _private_file(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``, mode 600 from the start, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o600)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(datetime.now(UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))


def _key_files(keys_dir: Path) -> list[Path]:
    if not (keys_dir / "keyring.json").is_file():
        return []
    return sorted([keys_dir / "keyring.json", *keys_dir.glob("*.pem")])


def create_backup(
    *, database_url: str, keys_dir: Path, out: Path, now: datetime | None = None
) -> BackupInfo:
    """Write a backup of the store and the keys to ``out`` (mode 600)."""
    now = now or datetime.now(UTC)
    engine = engine_name(database_url)
    if engine not in ("sqlite", "postgresql"):
        raise ConfigError(tr("不支持备份 {e} 数据库", "cannot back up a {e} database", e=engine))
    keys = _key_files(keys_dir)
    with tempfile.TemporaryDirectory(prefix="vc-backup-") as tmp:
        if engine == "sqlite":
            dump = Path(tmp) / "store.sqlite"
            revision, notices, count, head = _sqlite_copy(database_url, dump)
        else:
            dump = Path(tmp) / "store.pgdump"
            revision, notices, count, head = _pg_dump(database_url, dump)
        if not revision:
            raise StoreError(
                tr(
                    "数据库 {u} 还没有建表，没有可备份的内容",
                    "the database {u} has no schema yet; nothing to back up",
                    u=redact_url(database_url),
                )
            )
        info = BackupInfo(
            path=out,
            engine=engine,
            revision=revision,
            created_at=now,
            notices=notices,
            audit_entries=count,
            audit_head=head,
            key_files=tuple(p.name for p in keys),
        )
        with _private_file(out) as part, tarfile.open(part, "w:gz") as tar:
            _add_bytes(tar, "manifest.json", json.dumps(info.manifest(), indent=2).encode())
            tar.add(dump, arcname=dump.name)
            for key in keys:
                mode = 0o600 if key.suffix == ".pem" else (key.stat().st_mode & 0o777)
                _add_bytes(tar, _KEYS + key.name, key.read_bytes(), mode)
    return info


def _sqlite_copy(url: str, dest: Path) -> tuple[tuple[str, ...], int, int, str]:
    source = make_url(url).database
    if not source or not Path(source).exists():
        raise StoreError(tr("找不到数据库文件 {p}", "no database file at {p}", p=str(source)))
    src = sqlite3.connect(source, timeout=60)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)  # one read transaction: a consistent copy while workers write
        dst.execute("PRAGMA journal_mode=DELETE")  # the copy is one self-contained file
    finally:
        dst.close()
        src.close()
    copy = create_engine(f"sqlite:///{dest}")
    try:
        with copy.connect() as conn:
            revision = _revision(conn)
            if not revision:
                return (), 0, 0, ""
            with Session(conn) as s:
                return (revision, *_facts(s))
    finally:
        copy.dispose()


def _pg_dump(url: str, dest: Path) -> tuple[tuple[str, ...], int, int, str]:
    parsed = make_url(url)
    pg_dump = _tool("pg_dump")
    engine = create_engine(url, isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as conn:
            revision = _revision(conn)
            if not revision:
                return (), 0, 0, ""
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            with Session(conn) as s:
                facts = _facts(s)
            # The transaction stays open until pg_dump has taken the same snapshot.
            args, env = _libpq(parsed)
            _run(
                [
                    pg_dump,
                    *args,
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    f"--snapshot={snapshot}",
                    f"--file={dest}",
                    str(parsed.database),
                ],
                env,
                "pg_dump",
            )
            conn.rollback()
    finally:
        engine.dispose()
    return (revision, *facts)


def read_backup(path: Path) -> BackupInfo:
    """The manifest of a backup file (refuses files that are not villagecast backups)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            data = json.loads(member.read())
        if data.get("format") != BACKUP_FORMAT:
            raise ValueError("unknown format")
        return BackupInfo.of(path, data)
    except (OSError, KeyError, ValueError, AssertionError, tarfile.TarError) as exc:
        raise ConfigError(
            tr(
                "{p} 不是 villagecast 备份文件，或已损坏",
                "{p} is not a villagecast backup, or it is damaged",
                p=str(path),
            )
        ) from exc


def _ensure_fresh(url: str, keys_dir: Path) -> None:
    status = schema_status(url)
    fresh = status.empty
    if fresh and engine_name(url) == "postgresql":
        probe = create_engine(url)
        try:
            with probe.connect() as conn:
                fresh = not inspect(conn).get_table_names()
        finally:
            probe.dispose()
    if not fresh:
        raise StoreError(
            tr(
                "目标数据库 {u} 不是空的：只能恢复到新的数据库（新建一个空库，或换一个数据目录）",
                "the target database {u} is not empty: restore into a new database only "
                "(create an empty one, or use another data directory)",
                u=status.url,
            )
        )
    if (keys_dir / "keyring.json").exists():
        raise StoreError(
            tr(
                "{d} 已有签名密钥：恢复不会覆盖它们（请换一个空的数据目录）",
                "{d} already holds signing keys: a restore does not overwrite them (use an "
                "empty data directory)",
                d=str(keys_dir),
            )
        )


def restore_backup(path: Path, *, database_url: str, keys_dir: Path) -> BackupInfo:
    """Restore a backup into a fresh database and key directory, then upgrade and verify."""
    info = read_backup(path)
    target = engine_name(database_url)
    if target != info.engine:
        raise ConfigError(
            tr(
                "这是 {a} 数据库的备份，不能恢复到 {b} 数据库",
                "this is a backup of a {a} database; it cannot be restored into {b}",
                a=info.engine,
                b=target,
            )
        )
    _ensure_fresh(database_url, keys_dir)
    with tempfile.TemporaryDirectory(prefix="vc-restore-") as tmp, tarfile.open(path) as tar:
        dump_name = "store.sqlite" if info.engine == "sqlite" else "store.pgdump"
        dump = Path(tmp) / dump_name
        _extract(tar, dump_name, dump)
        if info.engine == "sqlite":
            dest = Path(str(make_url(database_url).database))
            with _private_file(dest) as part:
                shutil.copyfile(dump, part)
        else:
            parsed = make_url(database_url)
            args, env = _libpq(parsed)
            _run(
                [
                    _tool("pg_restore"),
                    *args,
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    "--single-transaction",
                    f"--dbname={parsed.database}",
                    str(dump),
                ],
                env,
                "pg_restore",
            )
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        for name in info.key_files:
            if "/" in name or name.startswith("."):
                continue  # only plain file names are ever written
            member = tar.getmember(_KEYS + name)
            _extract(tar, _KEYS + name, keys_dir / name, mode=member.mode & 0o777)
    upgrade(database_url)  # a backup from an older version gets this version's schema
    _verify_restored(database_url, info)
    return info


def _extract(tar: tarfile.TarFile, name: str, dest: Path, *, mode: int = 0o600) -> None:
    src = tar.extractfile(name)
    if src is None:
        raise ConfigError(tr("备份中缺少 {n}", "the backup lacks {n}", n=name))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        shutil.copyfileobj(src, fh)


def _verify_restored(url: str, info: BackupInfo) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn, Session(conn) as s:
            notices, count, head = _facts(s)
    finally:
        engine.dispose()
    if (notices, count, head) != (info.notices, info.audit_entries, info.audit_head):
        raise StoreError(
            tr(
                "恢复后的数据与备份记录不符（通知 {n}/{n0} 条，审计 {c}/{c0} 条）："
                "请勿使用该数据库",
                "the restored data does not match the backup's manifest (notices {n}/{n0}, "
                "audit entries {c}/{c0}): do not use this database",
                n=notices,
                n0=info.notices,
                c=count,
                c0=info.audit_entries,
            )
        )
