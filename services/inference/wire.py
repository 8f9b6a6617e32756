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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Generic, TypeVar

import msgspec
import numpy as np

from robot_sac.schemas import FLOAT32_MAX, TransitionsRequest
from robot_sac.store.base import TransitionLike

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


class WireTransitions(msgspec.Struct, Generic[V], forbid_unknown_fields=True):
    transitions: Annotated[list[WireTransition[V]], msgspec.Meta(min_length=1, max_length=10_000)]


# A JSON body's vectors are lists of floats; a MessagePack body's may also be float32 bytes.
JSON_BODY = WireTransitions[_Vector]
PACKED_BODY = WireTransitions[bytes | _Vector]
_decoder = msgspec.json.Decoder(JSON_BODY)


def read_transitions(body: bytes) -> Sequence[TransitionLike]:
    """The transitions of a ``POST /v1/transitions`` body.

    Raises pydantic's ``ValidationError`` (as ``TransitionsRequest`` would) for a body that is not
    valid; the caller turns it into a 400 or 422 with a readable ``detail``.
    """
    try:
        return _decoder.decode(body).transitions
    except (msgspec.ValidationError, msgspec.DecodeError):
        # Raises for nearly every body msgspec refuses. The few it refuses and pydantic takes
        # (none are known; NaN tokens, say, pydantic refuses too) are served from pydantic's
        # reading, so the route's answers are pydantic's in every case.
        return TransitionsRequest.model_validate_json(body).transitions


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


class PackedBodyError(ValueError):
    """A body that is not MessagePack at all (400, as malformed JSON is) or holds no map (422)."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.status = status


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
    :class:`PackedBodyError`.
    """
    try:
        return _packed_decoder.decode(body).transitions
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise PackedBodyError(f"the request body is not valid MessagePack ({exc})") from exc
    # As for JSON, what msgspec refuses is judged by the schema of record, so the answer (status
    # and message) is the one the same object would get as JSON.
    try:
        data = msgspec.msgpack.decode(body)
    except msgspec.DecodeError as exc:  # e.g. a map key msgspec cannot hold in a dict
        raise PackedBodyError(f"the request body is not valid MessagePack ({exc})") from exc
    if not isinstance(data, dict):
        raise PackedBodyError("the body must be a MessagePack map with a 'transitions' array", 422)
    items = data.get("transitions")
    for item in items if isinstance(items, list) else ():
        for name in VECTOR_FIELDS:
            value = item.get(name) if isinstance(item, dict) else None
            if isinstance(value, bytes) and len(value) % 4 == 0:
                item[name] = np.frombuffer(value, "<f4").tolist()
    return TransitionsRequest.model_validate(data).transitions
