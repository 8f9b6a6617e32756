"""The fast transitions reader agrees with the schema of record (pydantic's TransitionsRequest).

``read_transitions`` decodes with msgspec and falls back to pydantic on anything msgspec refuses,
so it is right exactly when msgspec never accepts a body pydantic refuses, and never reads a value
differently. Generated bodies (each field replaced by values of every JSON type, edge numbers and
lengths) check both.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from robot_sac.schemas import FLOAT32_MAX, Transition, TransitionsRequest
from robot_sac.services.inference.wire import (
    JSON_BODY,
    VECTOR_FIELDS,
    BodyError,
    WireTransition,
    WireTransitions,
    read_packed_transitions,
    read_transitions,
)

VALID: dict[str, Any] = {
    "robot_id": "arm-1",
    "episode_id": "e-7",
    "step": 3,
    "obs": [0.5, -1.0, 2.0],
    "action": [0.25],
    "reward": -0.75,
    "next_obs": [0.0, 1.0, 1.5],
    "terminated": False,
    "truncated": True,
    "policy_version": 4,
    "source": "human",
}

# JSON values of every kind, with the edges the schema draws lines at.
EDGE_NUMBERS = [
    0,
    -1,
    1.5,
    2**62,
    2**62 + 1,
    2**63,
    -(2**62),
    FLOAT32_MAX,
    -FLOAT32_MAX,
    3.5e38,
    1e308,
    1.0,
    True,
    False,
]
EDGE_VALUES = [
    *EDGE_NUMBERS,
    None,
    "",
    "x" * 128,
    "x" * 129,
    "1.0",
    "é",
    "false",
    "policy",
    "demo",
    "Human",
    "human ",
    [],
    [1.0],
    [1.0, 2.0, 3.0],
    [1.0, "2"],
    [3.5e38],
    [True],
    {},
]
scalars = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.text(max_size=3),
    st.sampled_from(["", "x" * 128, "x" * 129, "1.0", "é", "false"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=6,
)


def pydantic_reading(body: bytes) -> list[dict[str, Any]] | None:
    try:
        return [t.model_dump() for t in TransitionsRequest.model_validate_json(body).transitions]
    except ValidationError:
        return None


def msgspec_reading(body: bytes) -> list[dict[str, Any]] | None:
    try:
        decoded = msgspec.json.decode(body, type=JSON_BODY)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return [msgspec.structs.asdict(t) for t in decoded.transitions]


def test_the_structs_mirror_the_schema_field_for_field() -> None:
    fields = Transition.model_fields
    assert WireTransition.__struct_fields__ == tuple(fields)
    required = {name for name, f in fields.items() if f.is_required()}
    optional = len(WireTransition.__struct_defaults__)
    wire_required = set(WireTransition.__struct_fields__[:-optional])
    assert wire_required == required
    assert WireTransitions.__struct_fields__ == tuple(TransitionsRequest.model_fields)


def test_a_valid_body_reads_the_same_both_ways() -> None:
    without_source = {k: v for k, v in VALID.items() if k != "source"}  # the policy's
    body = json.dumps(
        {"transitions": [VALID, {**VALID, "step": 4, "policy_version": None}, without_source]}
    )
    assert msgspec_reading(body.encode()) == pydantic_reading(body.encode())
    read = msgspec_reading(body.encode())
    assert read is not None and [t["source"] for t in read] == ["human", "human", "policy"]


def assert_msgspec_no_looser(transition: dict[str, Any]) -> None:
    body = json.dumps({"transitions": [transition]}).encode()
    fast = msgspec_reading(body)
    if fast is not None:
        assert fast == pydantic_reading(body), f"msgspec accepted {body!r} differently"


FIELDS = [*VALID, "unknown_field"]


@pytest.mark.parametrize("field", FIELDS)
def test_every_edge_value_in_every_field_is_read_alike(field: str) -> None:
    for value in EDGE_VALUES:
        assert_msgspec_no_looser({**VALID, field: value})
    assert_msgspec_no_looser({k: v for k, v in VALID.items() if k != field})


@pytest.mark.parametrize("field", FIELDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_any_json_value_in_any_field_is_read_alike(field: str, value: Any) -> None:
    assert_msgspec_no_looser({**VALID, field: value})


@settings(max_examples=200, deadline=None)
@given(vector=st.lists(json_values, max_size=4), field=st.sampled_from(["obs", "action"]))
def test_vectors_of_anything_are_read_alike(vector: list[Any], field: str) -> None:
    body = json.dumps({"transitions": [{**VALID, field: vector}]}).encode()
    fast = msgspec_reading(body)
    if fast is not None:
        assert fast == pydantic_reading(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"transitions": [',
        b'{"transitions": []}',
        b"[]",
        b'{"transitions": [{"robot_id": "a"}]}',
        json.dumps({"transitions": [{**VALID, "reward": float("nan")}]}).encode(),  # NaN token
        json.dumps({"transitions": [{**VALID, "obs": [float("inf")]}]}).encode(),
        json.dumps({"transitions": [{**VALID, "step": 1.5}]}).encode(),
        json.dumps({"transitions": [VALID], "extra": 1}).encode(),
    ],
)
def test_a_refused_body_raises_pydantics_own_error(body: bytes) -> None:
    with pytest.raises(ValidationError) as ours:
        read_transitions(body)
    with pytest.raises(ValidationError) as reference:
        TransitionsRequest.model_validate_json(body)
    assert ours.value.errors(include_input=False) == reference.value.errors(include_input=False)


# --- MessagePack bodies --------------------------------------------------------------------------
# A MessagePack body is judged by the same schema: the object it holds must read exactly as the
# same object sent as JSON would, vectors given as float32 bytes reading as their values. The one
# difference is deliberate: the reader takes bytes vectors of any length and content, and the route
# and store check their length against the task and their values for NaN and infinity (tested
# over HTTP in test_msgpack_bodies.py).


def _as_values(obj: Any) -> Any:
    """``obj`` with every bytes vector of whole float32 values replaced by those values."""
    if isinstance(obj, dict) and isinstance(obj.get("transitions"), list):
        obj = {
            **obj,
            "transitions": [dict(t) if isinstance(t, dict) else t for t in obj["transitions"]],
        }
        for t in obj["transitions"]:
            for name in VECTOR_FIELDS:
                if isinstance(t, dict) and isinstance(t.get(name), bytes) and len(t[name]) % 4 == 0:
                    t[name] = np.frombuffer(t[name], "<f4").tolist()
    return obj


def reference_reading(obj: Any) -> list[dict[str, Any]] | None:
    """The schema of record's reading of the object a MessagePack body holds."""
    try:
        return [
            t.model_dump() for t in TransitionsRequest.model_validate(_as_values(obj)).transitions
        ]
    except ValidationError:
        return None


def packed_reading(obj: Any) -> list[dict[str, Any]] | None:
    try:
        transitions = read_packed_transitions(msgspec.msgpack.encode(obj))
    except ValidationError:
        return None
    out = []
    for t in transitions:
        fields = t.model_dump() if isinstance(t, Transition) else msgspec.structs.asdict(t)
        out.append(_as_values({"transitions": [fields]})["transitions"][0])
    return out


def f32(*values: float) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def test_a_packed_body_reads_as_the_same_json_body() -> None:
    packed = {**VALID, "obs": f32(0.5, -1.0, 2.0), "action": f32(0.25), "next_obs": [0.0, 1.0, 1.5]}
    fast = packed_reading({"transitions": [packed]})
    assert fast is not None
    assert fast == pydantic_reading(json.dumps({"transitions": [VALID]}).encode())
    # The reader hands the bytes on untouched: the store keeps them as they are.
    (t,) = read_packed_transitions(msgspec.msgpack.encode({"transitions": [packed]}))
    assert t.obs == f32(0.5, -1.0, 2.0) and t.action == f32(0.25)


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"\x81", b'{"transitions": []}'],
    ids=["reserved-byte", "truncated-map", "json-text"],
)
def test_a_body_that_is_not_msgpack_is_said_to_be(body: bytes) -> None:
    with pytest.raises(BodyError, match="MessagePack"):
        read_packed_transitions(body)


def assert_packed_no_looser(transition: dict[str, Any]) -> None:
    obj = {"transitions": [transition]}
    try:
        msgspec.msgpack.encode(obj)
    except OverflowError:  # an integer beyond 64 bits: MessagePack has no way to say it
        return
    fast = packed_reading(obj)
    reference = reference_reading(obj)
    bytes_vectors = any(isinstance(transition.get(n), bytes) for n in VECTOR_FIELDS)
    if fast is None:
        assert reference is None, f"the msgpack reader refused {obj!r}, which the schema takes"
        with pytest.raises(ValidationError) as ours:
            read_packed_transitions(msgspec.msgpack.encode(obj))
        with pytest.raises(ValidationError) as theirs:
            TransitionsRequest.model_validate(_as_values(obj))
        assert ours.value.errors(include_input=False) == theirs.value.errors(include_input=False)
    elif not bytes_vectors:
        assert fast == reference, f"the msgpack reader read {obj!r} differently"
    else:  # bytes vectors: the same values when the schema takes them
        assert reference is None or fast == reference


@pytest.mark.parametrize("field", FIELDS)
def test_every_edge_value_in_every_field_is_read_alike_from_msgpack(field: str) -> None:
    for value in [*EDGE_VALUES, b"", f32(1.0), f32(1.0, 2.0), b"\x00\x01", b"arm-1"]:
        assert_packed_no_looser({**VALID, field: value})
    assert_packed_no_looser({k: v for k, v in VALID.items() if k != field})


@pytest.mark.parametrize("field", FIELDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(json_values, st.binary(max_size=12)))
def test_any_value_in_any_field_is_read_alike_from_msgpack(field: str, value: Any) -> None:
    assert_packed_no_looser({**VALID, field: value})


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=5),
    field=st.sampled_from(list(VECTOR_FIELDS)),
)
def test_float32_bytes_read_as_their_values(values: list[float], field: str) -> None:
    fast = packed_reading({"transitions": [{**VALID, field: f32(*values)}]})
    assert fast is not None and fast[0][field] == values
