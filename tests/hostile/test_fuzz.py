"""Hostile input: whatever arrives, the answer is a result or one clear error, never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from channels._led_render import BoardSpec, EncodingProblem, paginate
from channels.keys import Keyring
from cli import app
from content_queue.errors import NoticeError
from content_queue.models import NoticeDraft, build_notice
from content_queue.privacy import find_personal_data, mask_text
from refdevice.device import ReferenceDevice

# Text that attacks: emoji, zero-width and bidi controls, rare CJK outside GB2312,
# combining marks, full-width digits, control characters, very long runs.
NASTY = st.sampled_from(
    [
        "🚨",
        "\u200b",
        "\u200d",
        "\u202e",
        "\u2066",
        "𠀀",
        "䶮",
        "\u0301",
        "１２３",
        "\x00",
        "\x1b[31m",
        "\r\n",
        "\t",
        "﷽",
        "Ａ",
        "．",
        "　",
        "'; DROP TABLE notices; --",
        "{{7*7}}",
        "<script>alert(1)</script>",
        "%s%n",
        "\\",
        "13812345678",
    ]
)
TEXT = st.lists(st.one_of(st.text(max_size=30), NASTY), max_size=12).map("".join)
VALUE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    TEXT,
    st.lists(TEXT, max_size=3),
    st.dictionaries(TEXT, TEXT, max_size=3),
)
FIELDS = [
    "title",
    "body",
    "category",
    "priority",
    "targets",
    "channels",
    "publish_at",
    "expires_at",
    "author",
    "revision",
    "supersedes",
    "table",
    "personal_data",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(st.sampled_from([*FIELDS, "extra"]), VALUE, max_size=8))
def test_notice_model_accepts_or_explains(data: dict[str, Any]) -> None:
    try:
        draft = build_notice(data)
    except NoticeError as err:
        zh = err.render("zh")
        assert zh.strip() and "Traceback" not in zh
        assert err.render("en").strip()  # noqa: PT017 (either outcome is fine)
    else:
        assert isinstance(draft, NoticeDraft)


@settings(max_examples=300, deadline=None)
@given(
    title=TEXT,
    body=st.one_of(TEXT, st.just("长" * 5000), st.just("长" * 20001)),
    category=st.one_of(st.sampled_from(["village_finance", "emergency"]), TEXT),
    publish_at=st.one_of(st.none(), TEXT, st.just("2026-13-45T25:61")),
)
def test_notice_draft_with_hostile_fields(
    title: str, body: str, category: str, publish_at: str | None
) -> None:
    data = {
        "title": title,
        "body": body,
        "category": category,
        "targets": {"villages": ["east-liu"]},
        "publish_at": publish_at,
    }
    try:
        draft = build_notice(data)
    except NoticeError as err:
        assert err.render("zh").strip()  # noqa: PT017 (either outcome is fine)
    else:
        # What is accepted is clean: no bidi or control characters survive.
        assert not any(ch in draft.title + draft.body for ch in "\u202e\u2066\x00\x1b")


@settings(max_examples=500, deadline=None)
@given(text=TEXT)
def test_privacy_scan_never_crashes_and_masking_removes_what_it_found(text: str) -> None:
    masked = mask_text(text, find_personal_data(text))
    assert find_personal_data(masked) == []  # nothing left to find once masked


@settings(max_examples=200, deadline=None)
@given(title=TEXT, body=TEXT, encoding=st.sampled_from(["gb2312", "gbk", "utf-8"]))
def test_led_pages_fit_or_name_the_character(title: str, body: str, encoding: str) -> None:
    spec = BoardSpec(chars_per_line=16, lines=2, encoding=encoding)  # type: ignore[arg-type]
    try:
        pages = paginate(title or "标题", body or "内容", spec, priority="routine")
    except EncodingProblem as exc:
        assert exc.chars and exc.text.render("zh")  # noqa: PT017 (either outcome is fine)
    else:
        for page in pages:
            for line in page.lines:
                line.encode(encoding)  # every page is showable as sent


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> ReferenceDevice:
    keys = Keyring.init(tmp_path_factory.mktemp("keys"))
    return ReferenceDevice(
        device_id="led-fuzz",
        host="127.0.0.1",
        port=1,
        keyring=keys.public_keys(),
        state_dir=tmp_path_factory.mktemp("state"),
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(st.text(max_size=8), VALUE, max_size=10).map(
            lambda d: json.dumps(d, default=str).encode()
        ),
        st.just(b"{" * 10000),
        st.just(b"\xff\xfe\x00"),
        st.just(b"x" * 70000),
    )
)
def test_reference_device_rejects_garbage_with_an_ack(
    device: ReferenceDevice, payload: bytes
) -> None:
    ack = device.handle(payload)
    assert ack.status == "rejected" and ack.reason
    assert device.shown == []


runner = CliRunner()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    title=TEXT.filter(lambda s: not s.startswith("-")),
    body=TEXT.filter(lambda s: not s.startswith("-")),
    village=st.one_of(st.just("east-liu"), TEXT.filter(lambda s: not s.startswith("-"))),
    when=st.one_of(st.just(""), TEXT.filter(lambda s: not s.startswith("-"))),
)
def test_cli_notice_add_never_shows_a_traceback(
    home: Path, title: str, body: str, village: str, when: str
) -> None:
    args = ["notice", "add", "--title", title, "--body", body, "--category", "meeting"]
    args += ["--village", village, "--channel", "tv_feed"]
    if when:
        args += ["--publish-at", when]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.strip()
