"""A faster reader for ``POST /v1/transitions`` bodies, with pydantic's answers for bad ones.

A batch of 100 HalfCheetah transitions is a 100 kB JSON body, and turning it into Python objects
was the largest single cost of ingest on the event loop. msgspec reads a well-formed body about
twice as fast as pydantic, into typed structs the store can pack directly. The schema of record
stays :class:`robot_sac.schemas.TransitionsRequest` (it documents the route and defines what is
valid): msgspec's types below accept a subset of what it accepts, with the same values, and
anything msgspec refuses is read again by pydantic, so a client gets exactly pydantic's answer
(status and message) whenever its body is not plainly valid. ``tests/test_wire.py`` checks the
subset property against pydantic on generated bodies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec

from robot_sac.schemas import FLOAT32_MAX, TransitionsRequest
from robot_sac.store.base import TransitionLike

_INT64_SAFE = 2**62
_Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64_SAFE)]
_Float32 = Annotated[float, msgspec.Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
_Vector = Annotated[list[_Float32], msgspec.Meta(min_length=1, max_length=65_536)]


class WireTransition(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """:class:`robot_sac.schemas.Transition`, field for field.

    ``gc=False``: a batch makes a hundred of these, and they hold only strings, numbers and lists
    of floats, so they can never be part of a reference cycle; untracked, they cost the cyclic
    garbage collector nothing.
    """

    robot_id: _Identifier
    episode_id: _Identifier
    step: _Count
    obs: _Vector
    action: _Vector
    reward: _Float32
    next_obs: _Vector
    terminated: bool
    truncated: bool
    policy_version: _Count | None = None


class WireTransitions(msgspec.Struct, forbid_unknown_fields=True):
    transitions: Annotated[list[WireTransition], msgspec.Meta(min_length=1, max_length=10_000)]


_decoder = msgspec.json.Decoder(WireTransitions)


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
