"""The disclosure board (三务公开栏): each notice as a PDF poster in the village's print folder.

Features
    formats       PDF, A4 or A3 portrait, CJK font embedded (channels/_poster.py): the
                  village's name, category, title, dates, body, the table (paged, header
                  repeated), the signature, and a QR code opening the notice's TV-feed item
                  page (when the village has a tv_feed endpoint)
    files         ``<village>-notice-<id>-r<revision>.pdf``, one per notice revision; a recall
                  writes ``<village>-notice-<id>-r<revision>-withdrawn.pdf`` ("此通知已撤回",
                  with the reason and the correction that replaces it) and deletes the poster
                  it replaces, so a printer's hot folder never prints the old one again
    writes        atomic: a hidden ``.*.tmp`` file in the same folder, fsync, rename; the same
                  notice renders the same bytes, so a repeated send rewrites an identical file
    limits        title 80 characters, body 20,000 characters, tables up to 2,000 rows
    confirms      none: 'delivered' once the file is durably in the folder (the folder is the
                  endpoint; nobody reports the printing and pinning up)
    recoverable   TransientError: the folder cannot be written now (disk full, share offline,
                  I/O error)
    config keys   devices.yaml ``kind: bulletin``, ``folder`` (absolute, or relative to the
                  data directory; default ``<home>/bulletin/<endpoint id>``), ``paper``
                  (A4 or A3); settings ``home``, ``feed_base_url`` (the QR code's link),
                  ``poster_font``

Errors (``OSError`` errno of the write):

    ==========================  ===============  ===================
    errno                       error            code
    ==========================  ===============  ===================
    ENOSPC, EDQUOT              TransientError   ``disk_full``
    EIO, ENOTCONN, ESTALE, ...  TransientError   ``io``
    EACCES, EPERM               PermanentError   ``permission``
    EROFS                       PermanentError   ``read_only``
    ENOTDIR, EISDIR             PermanentError   ``not_a_folder``
    ==========================  ===============  ===================
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import ClassVar

from channels._poster import Poster, PosterContent, Withdrawal, render_poster
from channels.base import (
    Channel,
    ChannelLimits,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
)
from channels.tv_feed import item_url
from content_queue.disclosures import withdrawal_of
from content_queue.errors import ConfigError
from content_queue.i18n import Text, tr
from content_queue.privacy import find_personal_data, mask_text
from content_queue.registry import BulletinEndpoint, EndpointKind, Registry, TvFeedEndpoint
from content_queue.settings import Settings
from content_queue.store import NoticeView, Store

__all__ = ["BulletinChannel", "bulletin_folder", "poster_file", "render_notice_poster"]


def bulletin_folder(settings: Settings, endpoint: BulletinEndpoint) -> Path:
    if endpoint.folder is None:
        return settings.home / "bulletin" / endpoint.id
    folder = Path(endpoint.folder).expanduser()
    return folder if folder.is_absolute() else settings.home / folder


def poster_file(village_id: str, notice: NoticeView, *, withdrawn: bool = False) -> str:
    """The poster's file name: sortable, ASCII (safe on any print server or share)."""
    suffix = "-withdrawn" if withdrawn else ""
    return f"{village_id}-notice-{notice.id:06d}-r{notice.revision}{suffix}.pdf"


def _qr_url(registry: Registry, settings: Settings, village_id: str, notice_id: int) -> str | None:
    village = registry.villages.get(village_id)
    if village is None:
        return None
    if any(isinstance(ep, TvFeedEndpoint) and ep.enabled for ep in village.endpoints):
        return item_url(settings.resolved_feed_base_url, village_id, notice_id)
    return None


def render_notice_poster(
    notice: NoticeView,
    *,
    village_id: str,
    registry: Registry,
    settings: Settings,
    store: Store,
    paper: str = "A4",
) -> Poster:
    """The poster of a notice for one village (a withdrawal poster if it was withdrawn)."""
    township_id = registry.village_township.get(village_id)
    township = registry.townships[township_id].name if township_id else ""
    withdrawal = None
    if notice.state != "active":
        facts = withdrawal_of(store, notice.id)
        if facts is not None:
            reason = mask_text(facts.reason, find_personal_data(facts.reason))
            withdrawal = Withdrawal(at=facts.at, reason=reason, superseded_by=facts.superseded_by)
    content = PosterContent(
        notice=notice,
        place=registry.village_name(village_id),
        region=f"{registry.doc.county.name}{township}",
        qr_url=_qr_url(registry, settings, village_id, notice.id),
        paper="A3" if paper == "A3" else "A4",
        withdrawal=withdrawal,
    )
    from channels._poster import find_font

    return render_poster(content, font=find_font(settings.poster_font))


def _write_atomic(path: Path, data: bytes) -> None:
    # Hidden and not ending in .pdf: a hot folder never picks up a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


_PERMANENT: dict[int, tuple[str, Text]] = {
    errno.EACCES: ("permission", tr("没有写入权限", "permission denied")),
    errno.EPERM: ("permission", tr("没有写入权限", "permission denied")),
    errno.EROFS: ("read_only", tr("文件夹只读", "the folder is read-only")),
    errno.ENOTDIR: ("not_a_folder", tr("路径不是文件夹", "the path is not a folder")),
    errno.EISDIR: ("not_a_folder", tr("目标是一个文件夹", "the target is a folder")),
}
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _os_error(exc: OSError, folder: Path) -> Exception:
    if exc.errno in _PERMANENT:
        code, why = _PERMANENT[exc.errno]
        return PermanentError(
            tr(
                "无法把海报写入打印文件夹 {f}：{why}（请检查 devices.yaml 的 folder 和文件夹权限）",
                "cannot write the poster into the print folder {f}: {why} (check the folder "
                "in devices.yaml and its permissions)",
                f=folder,
                why=why,
            ),
            code=code,
        )
    code = "disk_full" if exc.errno in _DISK_FULL else "io"
    return TransientError(
        tr(
            "暂时无法写入打印文件夹 {f}（{e}），稍后重试",
            "cannot write into the print folder {f} for now ({e}); will retry",
            f=folder,
            e=exc.strerror or type(exc).__name__,
        ),
        code=code,
    )


class BulletinChannel(Channel):
    """Writes each notice as a poster PDF into the village board's print folder."""

    kind: ClassVar[EndpointKind] = "bulletin"
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=80,
        max_body_chars=20000,
        supports_table=True,
        confirms="none",
        formats=("pdf",),
    )

    def _endpoint(self, ctx: DeliveryContext) -> tuple[BulletinEndpoint, str, Path]:
        endpoint = ctx.endpoint
        if not isinstance(endpoint, BulletinEndpoint):
            raise ConfigError(
                tr("端点 {ep} 不是 bulletin", "endpoint {ep} is not a bulletin", ep=endpoint.id)
            )
        village_id = ctx.village_id or ctx.registry.endpoint_village.get(endpoint.id) or ""
        return endpoint, village_id, bulletin_folder(ctx.settings, endpoint)

    def _poster(self, ctx: DeliveryContext, endpoint: BulletinEndpoint, village_id: str) -> Poster:
        return render_notice_poster(
            ctx.notice,
            village_id=village_id,
            registry=ctx.registry,
            settings=ctx.settings,
            store=ctx.store,
            paper=endpoint.paper,
        )

    def send(self, ctx: DeliveryContext) -> SendResult:
        endpoint, village_id, folder = self._endpoint(ctx)
        poster = self._poster(ctx, endpoint, village_id)
        path = folder / poster_file(village_id, ctx.notice)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, poster.data)
        except OSError as exc:
            raise _os_error(exc, folder) from exc
        return SendResult(
            "delivered",
            external_ref=str(path),
            details={"file": path.name, "pages": poster.pages, "paper": endpoint.paper},
        )

    def recall(self, ctx: DeliveryContext) -> SendResult:
        """A withdrawal poster ("此通知已撤回") replaces the notice's poster, which is deleted."""
        endpoint, village_id, folder = self._endpoint(ctx)
        poster = self._poster(ctx, endpoint, village_id)
        path = folder / poster_file(village_id, ctx.notice, withdrawn=True)
        old = folder / poster_file(village_id, ctx.notice)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, poster.data)
            removed = old.exists()
            old.unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error(exc, folder) from exc
        return SendResult(
            "delivered",
            external_ref=str(path),
            details={
                "file": path.name,
                "pages": poster.pages,
                "paper": endpoint.paper,
                "removed": old.name if removed else None,
            },
        )
