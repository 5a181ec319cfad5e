"""Device protocol v1, pure (no MQTT, no database): topics, signed commands, acks, presence."""

from __future__ import annotations

import base64
import heapq
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import rfc8785
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from channels.keys import SigningKey

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "SUCCESS_STATUS",
    "Ack",
    "AckStatus",
    "Command",
    "CommandKind",
    "CommandSigner",
    "DeviceState",
    "Priority",
    "RejectReason",
    "Rejection",
    "ReplayGuard",
    "SignedCommand",
    "canonical",
    "encode",
    "parse_topic",
    "protocol_schemas",
    "sign_command",
    "signing_input",
    "topic_ack",
    "topic_cmd",
    "topic_state",
    "verify_command",
]

PROTOCOL_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 64 * 1024
"""Commands larger than this are refused by devices as ``malformed`` (and never signed)."""

CommandKind = Literal["led.show", "led.clear", "speaker.play", "speaker.stop"]
AckStatus = Literal["shown", "played", "cleared", "stopped", "rejected"]
RejectReason = Literal[
    "bad_signature",
    "unknown_key",
    "wrong_device",
    "expired",
    "clock_skew",
    "replayed",
    "malformed",
    "unsupported",
    "bad_clip",
]
Priority = Literal["routine", "important", "emergency"]

SUCCESS_STATUS: Final[dict[str, AckStatus]] = {
    "led.show": "shown",
    "led.clear": "cleared",
    "speaker.play": "played",
    "speaker.stop": "stopped",
}
"""The ack status of a command that was carried out, by kind."""

_KINDS: Final = frozenset(SUCCESS_STATUS)
_DEVICE_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # as devices.yaml identifiers
_TOPIC_RE = re.compile(r"^(?P<device>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})/(?P<leaf>cmd|ack|state)$")
_JSON_INT_MAX = 2**53 - 1  # larger integers are not exact in every JSON implementation

DeviceId = Annotated[str, Field(pattern=_DEVICE_RE, description="the device's id")]
CommandId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="unique per delivery attempt family (see the protocol document)",
    ),
]
UnixTime = Annotated[int, Field(ge=0, le=_JSON_INT_MAX, description="unix time, seconds")]
Count = Annotated[int, Field(ge=0, le=_JSON_INT_MAX)]


# -- topics -------------------------------------------------------------------------------


def _check_device(device_id: str) -> str:
    if not re.fullmatch(_DEVICE_RE, device_id):
        raise ValueError(f"invalid device id for a topic: {device_id!r}")
    return device_id


def topic_cmd(prefix: str, device_id: str) -> str:
    return f"{prefix}/dev/{_check_device(device_id)}/cmd"


def topic_ack(prefix: str, device_id: str) -> str:
    return f"{prefix}/dev/{_check_device(device_id)}/ack"


def topic_state(prefix: str, device_id: str) -> str:
    return f"{prefix}/dev/{_check_device(device_id)}/state"


def parse_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(device_id, "cmd" | "ack" | "state")`` for a protocol topic, else None."""
    head = f"{prefix}/dev/"
    if not topic.startswith(head):
        return None
    match = _TOPIC_RE.match(topic[len(head) :])
    return None if match is None else (match["device"], match["leaf"])


# -- canonical form -----------------------------------------------------------------------


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError("floats are not allowed in protocol messages; use integers or strings")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


def canonical(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON. Floats are refused: number formatting is where
    implementations disagree, and one differing byte breaks every signature."""
    _refuse_floats(obj)
    return rfc8785.dumps(obj)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- messages -----------------------------------------------------------------------------

_MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid", strict=True)


class Command(BaseModel):
    """A signed command from the dispatcher to one device (``.../cmd``, QoS 1, never retained)."""

    model_config = _MODEL_CONFIG

    v: Literal[1] = Field(description="protocol version")
    id: CommandId
    device: DeviceId
    notice: Count = Field(description="notice id")
    revision: Count = Field(description="notice revision")
    delivery: Count = Field(description="the dispatcher's delivery id")
    kind: CommandKind
    priority: Priority
    issued_at: UnixTime
    expires_at: UnixTime = Field(description="unix time, seconds; devices refuse it from then on")
    body: dict[str, Any] = Field(description="kind-specific content")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="which signing key signed it")
    sig: str = Field(
        pattern=r"^[A-Za-z0-9_-]{86}$",
        description="base64url (no padding) Ed25519 signature over the canonical JSON of "
        "every other field",
    )

    @model_validator(mode="after")
    def _window(self) -> Command:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class Ack(BaseModel):
    """A device's answer to one command (topic ``.../ack``, QoS 1, not retained)."""

    model_config = _MODEL_CONFIG

    v: Literal[1] = Field(description="protocol version")
    command: str = Field(
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="the command's id; empty when the payload carried no usable id",
    )
    device: DeviceId
    status: AckStatus
    reason: RejectReason | None = Field(
        default=None, description="set exactly when status is rejected"
    )
    detail: str | None = Field(
        default=None, max_length=200, description="plain-language detail, never secret"
    )
    at: UnixTime = Field(description="the device's clock when it acted or refused")
    delivery: Count | None = Field(
        default=None,
        description="the command's delivery id, when the command's signature verified",
    )
    play_at: UnixTime | None = Field(
        default=None,
        description="speaker.play only: the planned time (from body.plays) of the one play "
        "this ack reports as heard in full; absent in the ack that accepts the command",
    )

    @model_validator(mode="after")
    def _reason_iff_rejected(self) -> Ack:
        if (self.status == "rejected") != (self.reason is not None):
            raise ValueError("reason is required for rejected acks and only for them")
        if self.play_at is not None and self.status != "played":
            raise ValueError("play_at belongs to played acks only")
        return self


class DeviceState(BaseModel):
    """Presence (topic ``.../state``, QoS 1, retained): birth, Last Will, clean goodbye."""

    model_config = _MODEL_CONFIG

    v: Literal[1] = Field(description="protocol version")
    device: DeviceId
    state: Literal["online", "offline"]
    at: UnixTime = Field(description="the device's clock; a Last Will carries its connect time")
    firmware: str | None = Field(default=None, max_length=100)
    capabilities: list[str] = Field(description="command kinds this device carries out")
    fresh_boot: bool = Field(
        description="true in the birth message of a device with no memory of what it should "
        "show or play (e.g. after a power loss): the dispatcher re-sends what is still valid"
    )
    showing: list[str] = Field(description="command ids it currently shows or has queued")


@dataclass(frozen=True)
class Rejection:
    """Why a device refused a payload.

    ``command_id`` is the id the payload claimed (for the ack), when it had a usable one.
    ``command`` is set when the signature verified (wrong device, expired, clock skew,
    replayed), so a device may trust its fields, e.g. to re-ack a duplicate.
    """

    reason: RejectReason
    detail: str
    command_id: str | None = None
    command: Command | None = None


# -- signing ------------------------------------------------------------------------------


def signing_input(fields: Mapping[str, Any]) -> bytes:
    """The bytes the signature covers: canonical JSON of every field but ``sig``."""
    return canonical({k: v for k, v in fields.items() if k != "sig"})


def sign_command(
    *,
    key: SigningKey,
    command_id: str,
    device: str,
    notice: int,
    revision: int,
    delivery: int,
    kind: CommandKind,
    priority: str,
    issued_at: int,
    expires_at: int,
    body: dict[str, Any],
) -> Command:
    """Sign a command; ValueError if it is invalid, holds floats, or would exceed 64 KiB."""
    fields: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": command_id,
        "device": device,
        "notice": notice,
        "revision": revision,
        "delivery": delivery,
        "kind": kind,
        "priority": priority,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "body": body,
        "key_id": key.key_id,
    }
    fields["sig"] = _b64(key.private.sign(signing_input(fields)))
    command = Command.model_validate(fields)
    size = len(encode(command))
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"command {command_id} is {size} bytes, over {MAX_PAYLOAD_BYTES}")
    return command


@dataclass(frozen=True)
class SignedCommand:
    """A signed command ready to publish: what the dispatcher records of it, and its payload
    (byte for byte what :func:`encode` gives for the same :class:`Command`)."""

    id: str
    device: str
    delivery: int
    kind: CommandKind
    issued_at: int
    expires_at: int
    payload: bytes


_COMMAND_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DEVICE_ID_RE = re.compile(_DEVICE_RE)


def _count(value: int, what: str) -> bytes:
    if type(value) is not int or not 0 <= value <= _JSON_INT_MAX:
        raise ValueError(f"{what} must be an integer from 0 to 2**53-1, not {value!r}")
    return str(value).encode("ascii")


class CommandSigner:
    """Signs one command (notice, kind, body, validity) for many devices.

    :func:`sign_command` validates and canonicalises the whole command for every device,
    twice; a fan-out to thousands of boards sends them all the same body. Here the command
    is validated once, the body canonicalised once, and each device's signing input is the
    same canonical JSON spliced together around it: RFC 8785 sorts members by name, and the
    only per-device members (``delivery``, ``device``, ``id``) are an integer and two strings
    that need no escaping (their patterns allow letters, digits, ``.``, ``_``, ``-``). The
    signature still covers the device id, so every device gets its own. The payload is
    exactly what ``encode(sign_command(...))`` gives (the tests compare them).
    """

    def __init__(
        self,
        *,
        key: SigningKey,
        notice: int,
        revision: int,
        kind: CommandKind,
        priority: str,
        issued_at: int,
        expires_at: int,
        body: dict[str, Any],
    ) -> None:
        # Everything but the per-device fields is checked once, by the full model.
        sign_command(
            key=key,
            command_id="x",
            device="x",
            notice=notice,
            revision=revision,
            delivery=0,
            kind=kind,
            priority=priority,
            issued_at=issued_at,
            expires_at=expires_at,
            body=body,
        )
        self._key = key
        self.kind: CommandKind = kind
        self.issued_at = issued_at
        self.expires_at = expires_at
        self._head = b'{"body":' + canonical(body) + b',"delivery":'
        self._expires = b'","expires_at":' + _count(expires_at, "expires_at") + b',"id":"'
        self._version = b',"v":' + _count(PROTOCOL_VERSION, "v") + b"}"
        self._tail = b"".join(
            [
                b'","issued_at":',
                _count(issued_at, "issued_at"),
                b',"key_id":',
                rfc8785.dumps(key.key_id),
                b',"kind":',
                rfc8785.dumps(kind),
                b',"notice":',
                _count(notice, "notice"),
                b',"priority":',
                rfc8785.dumps(priority),
                b',"revision":',
                _count(revision, "revision"),
            ]
        )

    def sign(self, *, command_id: str, device: str, delivery: int) -> SignedCommand:
        """ValueError for an invalid id, device id or delivery, or a payload over 64 KiB."""
        if not _COMMAND_ID_RE.fullmatch(command_id):
            raise ValueError(f"invalid command id {command_id!r}")
        if not _DEVICE_ID_RE.fullmatch(device):
            raise ValueError(f"invalid device id {device!r}")
        fields = b"".join(
            [
                self._head,
                _count(delivery, "delivery"),
                b',"device":"',
                device.encode("ascii"),
                self._expires,
                command_id.encode("ascii"),
                self._tail,
            ]
        )
        sig = _b64(self._key.private.sign(fields + self._version))
        payload = b"".join([fields, b',"sig":"', sig.encode("ascii"), b'"', self._version])
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"command {command_id} is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}"
            )
        return SignedCommand(
            id=command_id,
            device=device,
            delivery=delivery,
            kind=self.kind,
            issued_at=self.issued_at,
            expires_at=self.expires_at,
            payload=payload,
        )


def encode(command: Command | Ack | DeviceState) -> bytes:
    """The MQTT payload of a message: its canonical JSON (for a command, sig included)."""
    return canonical(command.model_dump())


# -- verification -------------------------------------------------------------------------


class ReplayGuard:
    """Command ids a device has carried out, kept until their expiry plus ``margin`` seconds.

    After expiry a command is refused as ``expired`` anyway; the margin covers a device
    clock that steps backwards. The guard holds at most ``capacity`` ids: when full, the
    id expiring first is dropped, because it is the one the expiry check will cover soonest.
    """

    def __init__(self, *, capacity: int = 100_000, margin: int = 3600) -> None:
        self.capacity = capacity
        self.margin = margin
        self._ids: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # (expires_at, id); stale entries skipped

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, command_id: str) -> bool:
        return command_id in self._ids

    def remember(self, command_id: str, expires_at: int) -> None:
        expires_at = max(expires_at, self._ids.get(command_id, expires_at))
        self._ids[command_id] = expires_at
        heapq.heappush(self._heap, (expires_at, command_id))
        while len(self._ids) > self.capacity:
            self._pop()
        if len(self._heap) > 2 * len(self._ids) + 64:
            self._heap = [(exp, cid) for cid, exp in self._ids.items()]
            heapq.heapify(self._heap)

    def prune(self, now: int) -> int:
        """Forget ids whose expiry plus margin has passed; returns how many were dropped."""
        dropped = 0
        while self._heap and self._heap[0][0] + self.margin <= now:
            dropped += self._pop()
        return dropped

    def _pop(self) -> int:
        expires_at, command_id = heapq.heappop(self._heap)
        if self._ids.get(command_id) == expires_at:
            del self._ids[command_id]
            return 1
        return 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for the device's state file."""
        return {"capacity": self.capacity, "margin": self.margin, "ids": dict(self._ids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplayGuard:
        guard = cls(capacity=int(data["capacity"]), margin=int(data["margin"]))
        for command_id, expires_at in dict(data["ids"]).items():
            if not isinstance(command_id, str) or type(expires_at) is not int:
                raise ValueError("a replay guard maps command ids to integer expiry times")
            guard.remember(command_id, expires_at)
        return guard


def _reject_float(text: str) -> Any:
    raise ValueError(f"floats are not allowed: {text}")


def _reject_constant(text: str) -> Any:
    raise ValueError(f"not JSON: {text}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; a signed message must mean one thing.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate keys")
    return obj


def _parse_json(payload: bytes) -> Any:
    return json.loads(
        payload.decode("utf-8"),
        parse_float=_reject_float,
        parse_constant=_reject_constant,
        object_pairs_hook=_no_duplicate_keys,
    )


def _claimed_id(obj: Any) -> str | None:
    value = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        return value
    return None


def _lenient_id(payload: bytes) -> str | None:
    """The id a payload refused by the strict parser claims, so the ack can name it."""
    try:
        return _claimed_id(json.loads(payload))
    except (ValueError, RecursionError):
        return None


def verify_command(
    payload: bytes,
    *,
    device_id: str,
    keyring: Mapping[str, Ed25519PublicKey],
    now: int,
    max_skew: int,
    guard: ReplayGuard,
) -> Command | Rejection:
    """Check a command payload in the documented order; never raises for bad input.

    On success the caller carries the command out and then calls ``guard.remember``.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection("malformed", f"payload larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        obj = _parse_json(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError too
        return Rejection("malformed", f"not strict JSON: {exc}"[:200], _lenient_id(payload))
    claimed = _claimed_id(obj)
    if not isinstance(obj, dict):
        return Rejection("malformed", "not a JSON object")
    version = obj.get("v")
    if type(version) is int and version != PROTOCOL_VERSION:
        return Rejection("unsupported", f"protocol version {version}", claimed)
    if isinstance(obj.get("kind"), str) and obj["kind"] not in _KINDS:
        return Rejection("unsupported", f"unknown command kind {obj['kind'][:40]!r}", claimed)
    try:
        command = Command.model_validate(obj)
        signed = signing_input(command.model_dump())
        # Lax spots in validation (1.0 for 1, true for 1) must not let two payloads share a
        # signature: the parsed object has to be exactly what was signed.
        if signed != signing_input(obj):
            raise ValueError("non-canonical values")
        signature = _unb64(command.sig)
        if _b64(signature) != command.sig:  # unused low bits of the last character
            raise ValueError("non-canonical signature encoding")
    except (ValueError, RecursionError) as exc:  # ValidationError is a ValueError
        detail = str(exc)
        if isinstance(exc, ValidationError) and exc.errors():
            first = exc.errors()[0]
            detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        return Rejection("malformed", detail[:200] or "does not match the schema", claimed)
    public = keyring.get(command.key_id)
    if public is None:
        return Rejection("unknown_key", f"unknown signing key {command.key_id}", command.id)
    try:
        public.verify(signature, signed)
    except InvalidSignature:
        return Rejection("bad_signature", "the signature does not verify", command.id)
    if command.device != device_id:
        return Rejection("wrong_device", f"addressed to {command.device}", command.id, command)
    if now >= command.expires_at:
        return Rejection("expired", f"expired at {command.expires_at}", command.id, command)
    # Only a command from the future is a skew: one issued long ago but still valid is
    # normal for a device that was offline while the broker queued it.
    if command.issued_at - now > max_skew:
        return Rejection(
            "clock_skew",
            f"issued {command.issued_at - now} s ahead of this device's clock",
            command.id,
            command,
        )
    if guard.seen(command.id):
        return Rejection("replayed", "this command id was already carried out", command.id, command)
    return command


# -- schemas ------------------------------------------------------------------------------

_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def protocol_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas (draft 2020-12) of every protocol message, for docs/device-protocol.md."""
    models: dict[str, tuple[type[BaseModel], str]] = {
        "command": (Command, "villagecast device command v1"),
        "ack": (Ack, "villagecast device ack v1"),
        "state": (DeviceState, "villagecast device state v1"),
    }
    schemas: dict[str, dict[str, Any]] = {}
    for name, (model, title) in models.items():
        schema = model.model_json_schema()
        schemas[name] = {
            "$schema": _SCHEMA_DIALECT,
            "$id": f"urn:villagecast:device-protocol:v1:{name}",
            **schema,
            "title": title,
        }
    return schemas
