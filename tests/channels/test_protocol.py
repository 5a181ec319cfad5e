"""Device protocol v1: canonical form, signing, every rejection reason, replay guard, schemas."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.keys import SigningKey, key_id_for
from channels.protocol import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Command,
    CommandSigner,
    DeviceState,
    Rejection,
    ReplayGuard,
    canonical,
    encode,
    parse_topic,
    protocol_schemas,
    sign_command,
    signing_input,
    topic_ack,
    topic_cmd,
    topic_state,
    verify_command,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "device-protocol.md"
NOW = 1_760_000_000
DEVICE = "led-east-liu-01"
# RFC 8032 section 7.1, test 1: a published key, used only for the documented test vector.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


def new_key() -> SigningKey:
    private = Ed25519PrivateKey.generate()
    return SigningKey(key_id_for(private.public_key()), private)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return new_key()


@pytest.fixture
def keyring(key: SigningKey) -> dict[str, Ed25519PublicKey]:
    return {key.key_id: key.public}


def make(key: SigningKey, **overrides: Any) -> Command:
    fields: dict[str, Any] = {
        "command_id": "vc-42",
        "device": DEVICE,
        "notice": 7,
        "revision": 1,
        "delivery": 42,
        "kind": "led.show",
        "priority": "routine",
        "issued_at": NOW,
        "expires_at": NOW + 3600,
        "body": {"title": "停水通知", "pages": [{"lines": ["明天 8:00-12:00 停水"], "ms": 4000}]},
    }
    fields.update(overrides)
    return sign_command(key=key, **fields)


def check(
    payload: bytes,
    keyring: dict[str, Ed25519PublicKey],
    *,
    now: int = NOW,
    guard: ReplayGuard | None = None,
) -> Command | Rejection:
    return verify_command(
        payload,
        device_id=DEVICE,
        keyring=keyring,
        now=now,
        max_skew=300,
        guard=guard or ReplayGuard(),
    )


def reason_of(result: Command | Rejection) -> str:
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    return result.reason


# -- topics and canonical form ----------------------------------------------------------


def test_topics_round_trip_and_refuse_wildcards() -> None:
    assert topic_cmd("vc/v1", "led-1") == "vc/v1/dev/led-1/cmd"
    assert topic_ack("vc/v1", "led-1") == "vc/v1/dev/led-1/ack"
    assert topic_state("vc/v1", "led-1") == "vc/v1/dev/led-1/state"
    for maker, leaf in ((topic_cmd, "cmd"), (topic_ack, "ack"), (topic_state, "state")):
        assert parse_topic("vc/v1", maker("vc/v1", "spk.a_1")) == ("spk.a_1", leaf)
    assert parse_topic("vc/v1", "vc/v2/dev/led-1/ack") is None
    assert parse_topic("vc/v1", "vc/v1/dev/led-1/other") is None
    assert parse_topic("vc/v1", "vc/v1/dev/a/b/ack") is None
    for bad in ("+", "#", "a/b", "", "-x"):
        with pytest.raises(ValueError, match="device id"):
            topic_cmd("vc/v1", bad)


def test_canonical_form_is_independent_of_key_order() -> None:
    one = canonical({"b": 1, "a": {"d": [True, None, "乡"], "c": -3}})
    two = canonical({"a": {"c": -3, "d": [True, None, "乡"]}, "b": 1})
    assert one == two == '{"a":{"c":-3,"d":[true,null,"乡"]},"b":1}'.encode()


@pytest.mark.parametrize(
    "value", [{"x": 1.0}, {"x": [1, 2.5]}, {"x": {"y": {"z": 0.1}}}, {"x": float("nan")}]
)
def test_canonical_refuses_floats(value: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="float"):
        canonical(value)


def test_canonical_refuses_integers_json_cannot_carry_exactly() -> None:
    with pytest.raises(ValueError, match="safe integer"):
        canonical({"x": 2**53})


def test_sign_refuses_floats_and_oversized_commands(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="float"):
        make(key, body={"brightness": 0.5})
    with pytest.raises(ValueError, match="bytes"):
        make(key, body={"text": "x" * MAX_PAYLOAD_BYTES})
    with pytest.raises(ValueError, match="expires_at"):
        make(key, expires_at=NOW)


# -- round trip -------------------------------------------------------------------------


def test_command_round_trip(key: SigningKey, keyring: dict[str, Ed25519PublicKey]) -> None:
    command = make(key, priority="emergency")
    payload = encode(command)
    assert payload == canonical(json.loads(payload))
    assert len(command.sig) == 86
    assert check(payload, keyring) == command


def test_signature_covers_the_parsed_fields_not_the_bytes(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    command = make(key)
    fields = json.loads(encode(command))
    pretty = json.dumps(dict(reversed(list(fields.items()))), indent=4).encode()
    assert check(pretty, keyring) == command
    key.public.verify(base64.urlsafe_b64decode(command.sig + "=="), signing_input(fields))


_json_leaf = st.none() | st.booleans() | st.integers(0, 2**53 - 1) | st.text(max_size=20)
_json_body = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        _json_leaf,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    ),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    body=_json_body,
    command_id=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    device=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    delivery=st.integers(0, 2**53 - 1),
    notice=st.integers(0, 2**53 - 1),
    priority=st.sampled_from(["routine", "important", "emergency"]),
)
def test_signer_payload_is_exactly_the_signed_command(
    body: dict[str, Any], command_id: str, device: str, delivery: int, notice: int, priority: str
) -> None:
    key = new_key()
    common: dict[str, Any] = {
        "notice": notice,
        "revision": 3,
        "kind": "led.show",
        "priority": priority,
        "issued_at": NOW,
        "expires_at": NOW + 60,
        "body": body,
    }
    signed = CommandSigner(key=key, **common).sign(
        command_id=command_id, device=device, delivery=delivery
    )
    expected = sign_command(
        key=key, command_id=command_id, device=device, delivery=delivery, **common
    )
    assert signed.payload == encode(expected)
    assert (signed.id, signed.device, signed.delivery) == (command_id, device, delivery)
    assert (signed.issued_at, signed.expires_at, signed.kind) == (NOW, NOW + 60, "led.show")


def test_signer_signs_each_device_and_refuses_what_sign_command_refuses(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    signer = CommandSigner(
        key=key,
        notice=7,
        revision=1,
        kind="led.show",
        priority="emergency",
        issued_at=NOW,
        expires_at=NOW + 3600,
        body={"title": "山洪预警", "pages": [{"lines": ["请立即转移"]}]},
    )
    mine = signer.sign(command_id="vc-1", device=DEVICE, delivery=1)
    other = signer.sign(command_id="vc-2", device="led-other", delivery=2)
    assert isinstance(check(mine.payload, keyring), Command)
    assert reason_of(check(other.payload, keyring)) == "wrong_device"
    with pytest.raises(ValueError, match="device id"):
        signer.sign(command_id="vc-3", device="led/+", delivery=3)
    with pytest.raises(ValueError, match="command id"):
        signer.sign(command_id="vc 3", device=DEVICE, delivery=3)
    with pytest.raises(ValueError, match="delivery"):
        signer.sign(command_id="vc-3", device=DEVICE, delivery=-1)
    with pytest.raises(ValueError, match="float"):
        CommandSigner(
            key=key,
            notice=7,
            revision=1,
            kind="led.show",
            priority="routine",
            issued_at=NOW,
            expires_at=NOW + 60,
            body={"brightness": 0.5},
        )
    big = CommandSigner(
        key=key,
        notice=7,
        revision=1,
        kind="led.show",
        priority="routine",
        issued_at=NOW,
        expires_at=NOW + 60,
        body={"text": "x" * (MAX_PAYLOAD_BYTES - 400)},
    )
    with pytest.raises(ValueError, match="bytes"):
        big.sign(command_id="vc-" + "9" * 61, device="d" * 64, delivery=2**53 - 1)


def test_ack_and_state_round_trip() -> None:
    ack = Ack(v=1, command="vc-1", device=DEVICE, status="shown", at=NOW, delivery=1)
    assert Ack.model_validate_json(encode(ack)) == ack
    rejected = Ack(
        v=1, command="", device=DEVICE, status="rejected", reason="malformed", detail="x", at=NOW
    )
    assert Ack.model_validate(json.loads(encode(rejected))) == rejected
    with pytest.raises(ValueError, match="reason"):
        Ack(v=1, command="vc-1", device=DEVICE, status="rejected", at=NOW)
    with pytest.raises(ValueError, match="reason"):
        Ack(v=1, command="vc-1", device=DEVICE, status="shown", reason="expired", at=NOW)
    state = DeviceState(
        v=1,
        device=DEVICE,
        state="online",
        at=NOW,
        firmware="fw/2",
        capabilities=["led.show", "led.clear"],
        fresh_boot=True,
        showing=["vc-1"],
    )
    assert DeviceState.model_validate_json(encode(state)) == state


# -- every rejection reason -------------------------------------------------------------


def tamper_one_byte(payload: bytes) -> bytes:
    at = payload.index("停水通知".encode()) + 2  # the last byte of 停: still valid UTF-8
    return payload[:at] + bytes([payload[at] ^ 0x01]) + payload[at + 1 :]


def test_tampered_body_is_a_bad_signature(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    tampered = tamper_one_byte(encode(make(key)))
    json.loads(tampered)  # still well-formed: only the signature can tell
    result = check(tampered, keyring)
    assert reason_of(result) == "bad_signature"
    assert isinstance(result, Rejection) and result.command_id == "vc-42"
    assert result.command is None  # nothing unverified is handed back as trustworthy


def test_signed_by_another_key_under_a_known_key_id(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    impostor = SigningKey(key.key_id, Ed25519PrivateKey.generate())
    assert reason_of(check(encode(make(impostor)), keyring)) == "bad_signature"


def test_unknown_key(keyring: dict[str, Ed25519PublicKey]) -> None:
    assert reason_of(check(encode(make(new_key())), keyring)) == "unknown_key"


def test_wrong_device(key: SigningKey, keyring: dict[str, Ed25519PublicKey]) -> None:
    result = check(encode(make(key, device="led-west-01")), keyring)
    assert reason_of(result) == "wrong_device"
    assert isinstance(result, Rejection) and result.command is not None


def test_expired_from_the_expiry_second_on(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    payload = encode(make(key, expires_at=NOW + 60))
    assert isinstance(check(payload, keyring, now=NOW + 59), Command)
    assert reason_of(check(payload, keyring, now=NOW + 60)) == "expired"


def test_issued_too_far_in_the_future_is_clock_skew(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    payload = encode(make(key, issued_at=NOW + 301, expires_at=NOW + 7200))
    assert reason_of(check(payload, keyring)) == "clock_skew"
    assert isinstance(check(payload, keyring, now=NOW + 1), Command)  # within 300 s


def test_issued_long_ago_but_unexpired_is_accepted(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    # A device that was offline gets the command from its broker session hours later: the
    # expiry, not the skew, decides (otherwise every queued command would be refused).
    payload = encode(make(key, issued_at=NOW - 6 * 3600, expires_at=NOW + 60))
    assert isinstance(check(payload, keyring), Command)
    # ...and a device clock far ahead of the dispatcher's shows up as expired.
    assert reason_of(check(payload, keyring, now=NOW + 3600)) == "expired"


def test_replayed_id_after_remember(key: SigningKey, keyring: dict[str, Ed25519PublicKey]) -> None:
    guard = ReplayGuard()
    first = make(key)
    assert isinstance(check(encode(first), keyring, guard=guard), Command)
    guard.remember(first.id, first.expires_at)
    resent = make(key, issued_at=NOW + 5)  # a re-send of the same delivery, signed again
    result = check(encode(resent), keyring, now=NOW + 5, guard=guard)
    assert reason_of(result) == "replayed"
    assert isinstance(result, Rejection) and result.command == resent


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"{not json", "JSON"),
        (b"\xff\xfe", "utf-8"),
        (b"[1, 2]", "object"),
        (b'"vc-1"', "object"),
        (b'{"v": 1, "id": "vc-1"}', "device"),
        (b"[" * 10_000 + b"]" * 10_000, "JSON"),
        (b'{"v": 1, "x": NaN}', "NaN"),
        (b'{"v": 1, "x": 1e3}', "float"),
    ],
)
def test_malformed(payload: bytes, detail: str, keyring: dict[str, Ed25519PublicKey]) -> None:
    result = check(payload, keyring)
    assert reason_of(result) == "malformed"
    assert isinstance(result, Rejection) and detail in result.detail


def test_oversized_is_malformed(key: SigningKey, keyring: dict[str, Ed25519PublicKey]) -> None:
    payload = encode(make(key)) + b" " * MAX_PAYLOAD_BYTES
    result = check(payload, keyring)
    assert reason_of(result) == "malformed" and "larger" in result.detail  # type: ignore[union-attr]


def mutate(payload: bytes, old: bytes, new: bytes) -> bytes:
    assert old in payload
    return payload.replace(old, new, 1)


def test_malformed_shapes_that_would_otherwise_verify(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    payload = encode(make(key))
    cases = {
        "true for 1": mutate(payload, b'"v":1', b'"v":true'),
        "float": mutate(payload, b'"revision":1', b'"revision":1.0'),
        "duplicate key": mutate(payload, b'{"body"', b'{"v":1,"body"'),
        "extra field": mutate(payload, b'{"body"', b'{"zz":1,"body"'),
        "string for int": mutate(payload, b'"notice":7', b'"notice":"7"'),
        "missing sig": re.sub(rb',"sig":"[^"]+"', b"", payload),
    }
    for name, bad in cases.items():
        result = check(bad, keyring)
        assert reason_of(result) == "malformed", name
        assert isinstance(result, Rejection) and result.command_id == "vc-42", name


def test_unknown_version_or_kind_is_unsupported(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    payload = encode(make(key))
    assert reason_of(check(mutate(payload, b'"v":1', b'"v":2'), keyring)) == "unsupported"
    blink = mutate(payload, b'"led.show"', b'"led.blink"')
    assert reason_of(check(blink, keyring)) == "unsupported"


def test_verification_order(key: SigningKey, keyring: dict[str, Ed25519PublicKey]) -> None:
    stranger = new_key()
    late_other = dict(device="led-west-01", expires_at=NOW + 10)
    assert reason_of(check(encode(make(stranger, **late_other)), keyring, now=NOW + 20)) == (
        "unknown_key"
    )
    tampered = tamper_one_byte(encode(make(key, **late_other)))
    assert reason_of(check(tampered, keyring, now=NOW + 20)) == "bad_signature"
    assert reason_of(check(encode(make(key, **late_other)), keyring, now=NOW + 20)) == (
        "wrong_device"
    )
    guard = ReplayGuard()
    guard.remember("vc-42", NOW + 10)
    expired_replay = encode(make(key, expires_at=NOW + 10))
    assert reason_of(check(expired_replay, keyring, now=NOW + 20, guard=guard)) == "expired"
    future_replay = encode(make(key, issued_at=NOW + 1000, expires_at=NOW + 2000))
    assert reason_of(check(future_replay, keyring, guard=guard)) == "clock_skew"


def test_no_single_byte_change_is_accepted(
    key: SigningKey, keyring: dict[str, Ed25519PublicKey]
) -> None:
    payload = encode(make(key, body={"text": "ok"}))
    for at in range(len(payload)):
        for flip in (0x01, 0x20):
            bad = payload[:at] + bytes([payload[at] ^ flip]) + payload[at + 1 :]
            assert isinstance(check(bad, keyring), Rejection), (at, bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_verify_never_raises(payload: bytes) -> None:
    public = Ed25519PrivateKey.generate().public_key()
    assert isinstance(check(payload, {"0" * 16: public}), Rejection)


# -- replay guard -----------------------------------------------------------------------


def test_replay_guard_forgets_after_expiry_plus_margin() -> None:
    guard = ReplayGuard(margin=60)
    guard.remember("a", 100)
    guard.remember("b", 200)
    assert guard.seen("a") and guard.seen("b") and not guard.seen("c")
    assert guard.prune(159) == 0 and guard.seen("a")
    assert guard.prune(160) == 1 and not guard.seen("a") and guard.seen("b")
    guard.remember("b", 50)  # a later, shorter re-send never shortens the memory
    assert guard.prune(259) == 0 and guard.seen("b")


def test_replay_guard_is_bounded_dropping_the_soonest_expiry() -> None:
    guard = ReplayGuard(capacity=3)
    for command_id, expires in (("late", 900), ("soon", 100), ("mid", 500), ("new", 700)):
        guard.remember(command_id, expires)
    assert len(guard) == 3
    assert not guard.seen("soon")
    assert all(guard.seen(c) for c in ("late", "mid", "new"))
    for i in range(1000):  # heap bookkeeping stays bounded too
        guard.remember("late", 900 + i)
    assert len(guard) == 3 and guard.seen("late")


def test_replay_guard_persists() -> None:
    guard = ReplayGuard(capacity=10, margin=5)
    guard.remember("a", 100)
    guard.remember("b", 200)
    data = json.loads(json.dumps(guard.to_json()))
    again = ReplayGuard.from_json(data)
    assert again.seen("a") and again.seen("b") and len(again) == 2
    assert (again.capacity, again.margin) == (10, 5)
    with pytest.raises(ValueError, match="integer expiry"):
        ReplayGuard.from_json({"capacity": 10, "margin": 5, "ids": {"a": "soon"}})


# -- schemas and the document ---------------------------------------------------------


def test_schemas_describe_every_message(key: SigningKey) -> None:
    schemas = protocol_schemas()
    assert set(schemas) == {"command", "ack", "state"}
    for name, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"urn:villagecast:device-protocol:v1:{name}"
        assert schema["title"] and schema["additionalProperties"] is False
    command_schema = schemas["command"]
    assert set(command_schema["required"]) == set(json.loads(encode(make(key))))
    assert command_schema["properties"]["kind"]["enum"] == [
        "led.show",
        "led.clear",
        "speaker.play",
        "speaker.stop",
    ]


def doc_json_block(marker: str) -> Any:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```json\n(.*?)```", text, re.S)
    assert match, f"docs/device-protocol.md has no block after <!-- {marker} -->"
    return json.loads(match.group(1))


@pytest.mark.parametrize("name", ["command", "ack", "state"])
def test_document_carries_the_current_schemas(name: str) -> None:
    assert doc_json_block(f"schema:{name}") == protocol_schemas()[name], (
        "regenerate the schema blocks in docs/device-protocol.md from protocol_schemas()"
    )


def test_document_test_vector_verifies() -> None:
    private = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    key = SigningKey(key_id_for(private.public_key()), private)
    vector = doc_json_block("vector:command")
    command = Command.model_validate(vector)
    assert command.key_id == key.key_id
    fields = {k: v for k, v in vector.items() if k not in ("v", "key_id", "sig")}
    fields["command_id"] = fields.pop("id")
    assert sign_command(key=key, **fields) == command  # Ed25519 signatures are deterministic
    text = DOC.read_text(encoding="utf-8")
    assert signing_input(vector).decode() in text
    assert encode(command).decode() in text
    result = verify_command(
        encode(command),
        device_id=command.device,
        keyring={key.key_id: key.public},
        now=command.issued_at,
        max_skew=300,
        guard=ReplayGuard(),
    )
    assert result == command
