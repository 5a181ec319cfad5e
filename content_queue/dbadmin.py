"""Schema administration for operators: which revision a database is at, and upgrading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from content_queue.errors import StoreError
from content_queue.i18n import tr

__all__ = ["SchemaStatus", "engine_name", "redact_url", "schema_status", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class SchemaStatus:
    url: str
    """The database URL with any password hidden."""
    current: tuple[str, ...]
    """Revisions the database is at (empty: no schema yet)."""
    head: tuple[str, ...]
    """Revisions this version of villagecast expects."""

    @property
    def up_to_date(self) -> bool:
        return set(self.current) == set(self.head)

    @property
    def empty(self) -> bool:
        return not self.current


def redact_url(url: str) -> str:
    """The URL as it may be printed: the password, if any, replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def engine_name(url: str) -> str:
    """``sqlite`` or ``postgresql`` (the backends the store supports)."""
    return make_url(url).get_backend_name()


def _heads() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(sorted(ScriptDirectory(str(MIGRATIONS)).get_heads()))


def schema_status(url: str) -> SchemaStatus:
    """Read the database's revision without changing anything.

    Raises StoreError when the database cannot be reached.
    """
    from alembic.runtime.migration import MigrationContext

    parsed = make_url(url)
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if path and path != ":memory:" and not Path(path).exists():
        # Not created yet: say so without creating an empty file.
        return SchemaStatus(url=redact_url(url), current=(), head=_heads())
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            current: tuple[str, ...] = ()
            if inspect(conn).has_table("alembic_version"):
                current = tuple(sorted(MigrationContext.configure(conn).get_current_heads()))
    except SQLAlchemyError as exc:
        raise StoreError(
            tr(
                "无法连接数据库 {url}：{e}",
                "cannot reach the database {url}: {e}",
                url=redact_url(url),
                e=str(getattr(exc, "orig", None) or exc).splitlines()[0],
            )
        ) from exc
    finally:
        engine.dispose()
    return SchemaStatus(url=redact_url(url), current=current, head=_heads())


def upgrade(url: str) -> tuple[SchemaStatus, SchemaStatus]:
    """Bring the schema to head (idempotent); returns the status before and after."""
    from content_queue.store import Store

    before = schema_status(url)
    if not before.up_to_date:
        store = Store(url)  # migrates under a lock (file lock or PostgreSQL advisory lock)
        store.engine.dispose()
        if store.read_engine is not store.engine:
            store.read_engine.dispose()
    return before, schema_status(url)
