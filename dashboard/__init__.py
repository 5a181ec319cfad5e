"""The township monitoring dashboard: web pages, a JSON API, /metrics and the public feeds.

Sits beside the dispatcher (it imports dispatcher, channels and content_queue; the CLI
imports it lazily): ``villagecast serve``, and ``villagecast up`` runs it too.
"""

from __future__ import annotations

__all__ = ["create_app"]

from dashboard.app import create_app
