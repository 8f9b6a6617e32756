"""A faster reader for ``POST /v1/transitions`` bodies, with pydantic's answers for bad ones.

A batch of 100 HalfCheetah transitions is a 100 kB JSON body, and turning it into Python objects
was the largest single cost of ingest on the event loop. msgspec reads a well-formed body about
twice as fast as pydantic, into typed structs the store can pack directly. The schema of record
stays :class:`robot_sac.schemas.TransitionsRequest` (it documents the route and defines what is
valid): msgspec's types below accept a subset of what it accepts, with the same values, and
anything msgspec refuses is read again by pydantic, so a client gets exactly pydantic's answer
(status and message) whenever its body is not plainly valid. ``tests/test_wire.py`` checks the
subset property against pydantic on generated bodies.

The same route also reads MessagePack bodies (below): the same object, where vectors may be
float32 bytes. They are judged by the same schema.

Pydantic collects every error of a body, which for a large body full of wrong values takes ~75 us
a kilobyte, all of it on the event loop. So the schema of record is asked only for bodies of up to
:data:`EXACT_ERRORS_MAX_BYTES`; a larger refused body gets msgspec's first error (it stops there),
in the same ``field: reason`` form. The act bodies are read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Generic, TypeVar

import msgspec
import numpy as np
from pydantic import BaseModel

from robot_sac.schemas import (
    FLOAT32_MAX,
    SOURCES,
    ActBatchRequest,
    ActRequest,
    Source,
    TransitionsRequest,
)
from robot_sac.store.records import TransitionLike

# Refused bodies up to this size get pydantic's full answer (at most ~1.5 ms of its time).
EXACT_ERRORS_MAX_BYTES = 16 * 2**10

_INT64_SAFE = 2**62
_Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64_SAFE)]
_Float32 = Annotated[float, msgspec.Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
_Vector = Annotated[list[_Float32], msgspec.Meta(min_length=1, max_length=65_536)]


V = TypeVar("V")


class WireTransition(msgspec.Struct, Generic[V], forbid_unknown_fields=True, gc=False):
    """:class:`robot_sac.schemas.Transition`, field for field; ``V`` is the vectors' type.

    ``gc=False``: a batch makes a hundred of these, and they hold only strings, numbers, bytes and
    lists of floats, so they can never be part of a reference cycle; untracked, they cost the
    cyclic garbage collector nothing.
    """

    robot_id: _Identifier
    episode_id: _Identifier
    step: _Count
    obs: V
    action: V
    reward: _Float32
    next_obs: V
    terminated: bool
    truncated: bool
    policy_version: _Count | None = None
    # A Literal is checked by msgspec as it reads the string: no cost beyond the field's bytes.
    source: Source = "policy"


class WireTransitions(msgspec.Struct, Generic[V], forbid_unknown_fields=True):
    transitions: Annotated[list[WireTransition[V]], msgspec.Meta(min_length=1, max_length=10_000)]


# A JSON body's vectors are lists of floats; a MessagePack body's may also be float32 bytes.
JSON_BODY = WireTransitions[_Vector]
PACKED_BODY = WireTransitions[bytes | _Vector]

if TYPE_CHECKING:
    from robot_sac.schemas import Transition

    def _store_accepts(
        json_row: WireTransition[list[float]],
        packed_row: WireTransition[bytes | list[float]],
        model: Transition,
    ) -> list[TransitionLike]:
        """Never called: mypy checks here that both wire forms and the pydantic model satisfy
        the store's protocol (a field renamed or retyped on one side fails `make typecheck`)."""
        return [json_row, packed_row, model]


_decoder = msgspec.json.Decoder(JSON_BODY)


class BodyError(ValueError):
    """A body that is not JSON or MessagePack at all (400), holds no object (422), or was refused
    by msgspec's reading (422): ``status`` says which."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.status = status


# msgspec names a value outside a Literal without saying what it may be; pydantic's answer (for
# small bodies) lists the choices, and so does this one, for the Literal fields of the wire.
_CHOICES = {"source": " or ".join((", ".join(map(repr, SOURCES[:-1])), repr(SOURCES[-1])))}


def _msgspec_error(exc: msgspec.MsgspecError, kind: str) -> BodyError:
    """msgspec's first error as the service words errors: ``where: what``."""
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return BodyError(f"the request body is not valid {kind} ({text})", 400)
    what, _, where = text.partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    choices = _CHOICES.get(where.rpartition(".")[2])
    if choices is not None:
        what = f"{what}; it should be {choices}"
    return BodyError(f"{where}: {what}" if where else what, 422)


def _refused(body: bytes, model: type[BaseModel], exc: msgspec.MsgspecError) -> BaseModel:
    """What the schema of record says of a body msgspec refused: pydantic's ``ValidationError``
    for a small body, msgspec's first error (:class:`BodyError`) for a large one. Returns
    pydantic's reading in the (unknown) case that it takes what msgspec refused."""
    if len(body) > EXACT_ERRORS_MAX_BYTES:
        raise _msgspec_error(exc, "JSON") from exc
    return model.model_validate_json(body)


def read_transitions(body: bytes) -> Sequence[TransitionLike]:
    """The transitions of a ``POST /v1/transitions`` body.

    Raises pydantic's ``ValidationError`` (as ``TransitionsRequest`` would) for a body that is not
    valid, or :class:`BodyError` for one larger than :data:`EXACT_ERRORS_MAX_BYTES`; the
    caller turns either into a 400 or 422 with a readable ``detail``.
    """
    try:
        return _decoder.decode(body).transitions
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        # The few bodies msgspec refuses and pydantic takes (none are known; NaN tokens, say,
        # pydantic refuses too) are served from pydantic's reading.
        return _refused(body, TransitionsRequest, exc).transitions  # type: ignore[attr-defined]


# --- act bodies ------------------------------------------------------------------------------
class WireAct(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """:class:`robot_sac.schemas.ActRequest`, field for field."""

    obs: _Vector
    deterministic: bool = False
    robot_id: _Identifier | None = None


class WireActBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """:class:`robot_sac.schemas.ActBatchRequest`, field for field."""

    obs: Annotated[list[_Vector], msgspec.Meta(min_length=1, max_length=4096)]
    deterministic: bool = False
    robot_id: _Identifier | None = None


_act_decoder = msgspec.json.Decoder(WireAct)
_act_batch_decoder = msgspec.json.Decoder(WireActBatch)


def read_act(body: bytes) -> WireAct | ActRequest:
    """A ``POST /v1/act`` body; refusals as :func:`read_transitions`."""
    try:
        return _act_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _refused(body, ActRequest, exc)  # type: ignore[return-value]


def read_act_batch(body: bytes) -> WireActBatch | ActBatchRequest:
    """A ``POST /v1/act/batch`` body; refusals as :func:`read_transitions`."""
    try:
        return _act_batch_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _refused(body, ActBatchRequest, exc)  # type: ignore[return-value]


# --- MessagePack bodies ----------------------------------------------------------------------
# The same object as the JSON body, encoded as MessagePack, where a vector may also be a ``bin``
# of little-endian float32 values (4 bytes per value). Reading 4,000 float literals was the
# largest cost of a JSON batch; float32 bytes are stored as they arrive. ``RobotClient`` sends
# this; JSON stays the API's contract of record and every client may keep using it.
MSGPACK_TYPES = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)
_packed_decoder = msgspec.msgpack.Decoder(PACKED_BODY)
VECTOR_FIELDS = ("obs", "action", "next_obs")


def is_msgpack(content_type: str | None) -> bool:
    return content_type is not None and content_type.partition(";")[0].strip().lower() in (
        MSGPACK_TYPES
    )


def read_packed_transitions(body: bytes) -> Sequence[TransitionLike]:
    """The transitions of a MessagePack ``POST /v1/transitions`` body.

    Vectors are float32 bytes or lists of floats. Their lengths (a whole number of float32
    values, the task's) and finiteness are checked by the caller and the store, where the task is
    known. Anything else that is wrong raises pydantic's ``ValidationError``, exactly as the same
    object sent as JSON would (bytes vectors read as their float32 values), or
    :class:`BodyError`.
    """
    try:
        return _packed_decoder.decode(body).transitions
    except msgspec.ValidationError as exc:
        if len(body) > EXACT_ERRORS_MAX_BYTES:
            raise _msgspec_error(exc, "MessagePack") from exc
    except msgspec.DecodeError as exc:
        raise BodyError(f"the request body is not valid MessagePack ({exc})") from exc
    # As for JSON, what msgspec refuses is judged by the schema of record, so the answer (status
    # and message) is the one the same object would get as JSON.
    try:
        data = msgspec.msgpack.decode(body)
    except msgspec.DecodeError as exc:  # e.g. a map key msgspec cannot hold in a dict
        raise BodyError(f"the request body is not valid MessagePack ({exc})") from exc
    except RecursionError as exc:  # arrays in arrays, thousands deep
        raise BodyError("the request body is nested too deeply to be a transition batch") from exc
    if not isinstance(data, dict):
        raise BodyError("the body must be a MessagePack map with a 'transitions' array", 422)
    items = data.get("transitions")
    for item in items if isinstance(items, list) else ():
        for name in VECTOR_FIELDS:
            value = item.get(name) if isinstance(item, dict) else None
            if isinstance(value, bytes) and len(value) % 4 == 0:
                item[name] = np.frombuffer(value, "<f4").tolist()
    return TransitionsRequest.model_validate(data).transitions
