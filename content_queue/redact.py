"""Keeping secrets out of text: URLs and messages redacted, and every log record scrubbed.

Two vendors put secrets in URLs: WeCom's webhook key (``?key=``) and WeChat's access token
and AppSecret (``?access_token=``, ``&secret=``). HTTP clients log those URLs (httpx at
INFO, urllib3 at DEBUG) and put them in exception messages, so besides what the channels
write themselves, :func:`install` scrubs every log record as it is made: its message, its
formatted traceback and its stack. Two nets, both cheap:

- by pattern: the value of a secret-bearing query parameter or JSON field;
- by value: every secret a channel read from the environment, and every access token it
  holds (:func:`remember_secret`), wherever it appears.

The crash log and anything else written outside logging go through :func:`redact`.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import traceback
from collections import OrderedDict
from typing import Any

__all__ = ["MASK", "install", "redact", "remember_secret"]

MASK = "***"
_MIN_LEN = 8
"""Shorter values are not scrubbed by value: they would mask ordinary words and numbers."""

_QUERY = re.compile(
    r"(?P<name>(?<=[?&;])(?:key|access_token|secret|appsecret|password|token)"
    r"|\b(?:access_token|secret|appsecret|app_secret|password))=(?P<value>[^&\s'\"<>]+)",
    re.IGNORECASE,
)
_JSON = re.compile(
    r"(?P<name>[\"'](?:access_token|secret|appsecret|app_secret|password)[\"'])"
    r"(?P<sep>\s*:\s*)[\"'](?P<value>[^\"']+)[\"']",
    re.IGNORECASE,
)

_MAX_SHORT_LIVED = 64
"""Tokens remembered at most: a worker that runs for months sees a new token every two
hours per account; the oldest (long expired) are forgotten, so scrubbing stays cheap."""

_secrets: set[str] = set()
_short_lived: OrderedDict[str, None] = OrderedDict()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()


def remember_secret(value: str | None, *, short_lived: bool = False) -> None:
    """Scrub this value from every log record and redacted text from now on
    (``short_lived``: a token that expires; only the most recent are kept)."""
    global _pattern
    if not value or len(value) < _MIN_LEN or value in _secrets:
        return
    with _lock:
        if short_lived:
            if value in _short_lived:
                _short_lived.move_to_end(value)
                return
            _short_lived[value] = None
            while len(_short_lived) > _MAX_SHORT_LIVED:
                _short_lived.popitem(last=False)
        else:
            _secrets.add(value)
            _short_lived.pop(value, None)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets | _short_lived.keys(), key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """``text`` with secret query parameters, JSON fields and known secret values masked."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _QUERY.sub(lambda m: f"{m['name']}={MASK}", text)
    return _JSON.sub(lambda m: f'{m["name"]}{m["sep"]}"{MASK}"', text)


def _format_exception(exc_info: Any) -> str:
    # What logging.Formatter.formatException produces, so handlers print it unchanged.
    sio = io.StringIO()
    traceback.print_exception(exc_info[0], exc_info[1], exc_info[2], None, sio)
    return sio.getvalue().removesuffix("\n")


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it when the record is emitted
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatters use exc_text when it is set: the traceback they print is this one.
        record.exc_text = redact(_format_exception(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_installed = False


def install() -> None:
    """Scrub every log record this process makes, whatever logger or handler it goes to.

    A log record factory rather than a filter: filters sit on one logger or one handler,
    and the worker's handlers belong to Celery, pytest or the operator's configuration.
    Idempotent; called by the modules that hold secrets and by the CLI.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
