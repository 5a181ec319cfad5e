"""content_queue.redact: secrets masked in text and in every log record."""

from __future__ import annotations

import logging
import uuid

import pytest

from content_queue.redact import MASK, install, redact, remember_secret


def test_secret_query_parameters_are_masked() -> None:
    url = (
        "POST http://qyapi/cgi-bin/webhook/send?key=693a91f6-7b0e-4bc4-97a0-0ec2a1f5aaa1 "
        "GET http://api/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=abc123def "
        "POST http://api/cgi-bin/draft/add?access_token=TOKEN_xyz&x=1"
    )
    clean = redact(url)
    assert "693a91f6" not in clean and "abc123def" not in clean and "TOKEN_xyz" not in clean
    assert "send?key=*** " in clean
    assert "&secret=*** " in clean and "appid=wx1" in clean
    assert "?access_token=***&x=1" in clean


def test_words_that_only_look_like_parameters_are_kept() -> None:
    banner = ".> vc.led  exchange=vc.led(direct) key=vc.led  app_secret_env=VC_WECHAT_X"
    assert redact(banner) == banner


def test_secret_json_fields_are_masked() -> None:
    text = '{"access_token": "ACCESS-abc", "expires_in": 7200, "secret":"s3cr3t"}'
    clean = redact(text)
    assert "ACCESS-abc" not in clean and "s3cr3t" not in clean and '"expires_in": 7200' in clean


def test_remembered_values_are_masked_anywhere_and_short_ones_never() -> None:
    secret = f"SECRET-{uuid.uuid4()}"
    remember_secret(secret)
    remember_secret("1234")  # too short to mask without masking ordinary text
    clean = redact(f"robot {secret} failed; code 1234; {secret[:-1]}")
    assert secret not in clean and f"robot {MASK} failed; code 1234" in clean


def test_every_log_record_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    install()
    install()  # idempotent: one wrapper
    secret = f"SECRET-{uuid.uuid4()}"
    remember_secret(secret)
    log = logging.getLogger("tests.redact")
    with caplog.at_level(logging.INFO):
        log.info("HTTP Request: POST %s", f"http://h/send?key={uuid.uuid4()}")
        log.info("with %s in the arguments", secret)
        try:
            raise RuntimeError(f"http://h/token?appid=wx1&secret={secret}")
        except RuntimeError:
            log.exception("failed")
    text = caplog.text
    assert secret not in text
    assert "send?key=***" in text and "RuntimeError: http://h/token?appid=wx1&secret=***" in text
    assert "Traceback" in text


def test_a_bad_format_string_is_left_for_logging_to_report() -> None:
    install()
    record = logging.getLogRecordFactory()(
        "tests.redact", logging.INFO, __file__, 1, "bad %d", ("not a number",), None
    )
    assert (record.msg, record.args) == ("bad %d", ("not a number",))


def test_only_the_most_recent_tokens_are_remembered() -> None:
    first = f"TOKEN-first-{uuid.uuid4()}"
    remember_secret(first, short_lived=True)
    assert first not in redact(first)
    for _ in range(100):  # a worker running for weeks: a new token every two hours
        remember_secret(f"TOKEN-{uuid.uuid4()}", short_lived=True)
    assert redact(first) == first  # long expired: forgotten, the pattern stays small
    kept = f"SECRET-{uuid.uuid4()}"
    remember_secret(kept)
    for _ in range(100):
        remember_secret(f"TOKEN-{uuid.uuid4()}", short_lived=True)
    assert kept not in redact(kept)  # secrets from the environment are never forgotten
