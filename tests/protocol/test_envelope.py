"""The kpi-envelope/1 format: round trip, limits, malformed payloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.nats.envelope import EnvelopeError, envelope_headers, pack, record_of, unpack
from proxy.nats.protocol import encode_pub, header_value

records = st.lists(
    st.tuples(
        st.none()
        | st.binary(min_size=1, max_size=64).map(
            lambda b: b"NATS/1.0\r\nX: " + b.hex().encode() + b"\r\n\r\n"
        ),
        st.binary(max_size=256),
    ),
    max_size=20,
)


@given(records)
def test_round_trip(pairs: list[tuple[bytes | None, bytes]]) -> None:
    assert unpack(pack(pairs)) == pairs


def test_empty_payloads_and_headers() -> None:
    pairs = [(None, b""), (b"NATS/1.0\r\nA: b\r\n\r\n", b""), (None, b"x")]
    assert unpack(pack(pairs)) == pairs


@pytest.mark.parametrize(
    "payload",
    [b"\x00", b"\x00\x00\x00\x05abc", b"\x00\x00\x00\x00\x00\x00\x00\x09short", b"\x00\x00\x00\x00\x00\x00"],
)
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(EnvelopeError):
        unpack(payload)


def test_headers_name_count_and_format() -> None:
    block = envelope_headers(7)
    assert header_value(block, "KPI-Batch-Count") == "7"
    assert header_value(block, "KPI-Batch-Format") == "kpi-envelope/1"


def test_record_of_pub_and_hpub() -> None:
    assert record_of(encode_pub("a.b", None, b"hello")) == (None, b"hello")
    headers = b"NATS/1.0\r\nK: v\r\n\r\n"
    assert record_of(encode_pub("a.b", "r", b"hi", headers)) == (headers, b"hi")
