"""The official-account stand-in for tests (refdevice.wechat_mp_standin)."""

from __future__ import annotations

from refdevice.wechat_mp_standin import TOKEN_PREFIX, Injected, Recorded, WeChatMpStandin

__all__ = ["TOKEN_PREFIX", "Injected", "Recorded", "WeChatMpStandin"]
