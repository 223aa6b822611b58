"""HTTP ingest's batch framing in C and in Python: `frame_items` and `ndjson_array` against their
references `frame_items_py` and `ndjson_array_py` (proxy/ports/ingest_batch.py).

For random batches (subjects that repeat or not, non-ASCII data, every priority, items only the
per-item path takes: a reply, headers, dataBase64, a subject the classification refuses, a message over
max_payload), both return the same frames, answers and counts, or both decline; the frames parse back to
the items and the answers are the JSON the per-item path writes for forwarded messages.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.nats import speedups
from proxy.nats.protocol import ClientParser, add_header
from proxy.ports.http_ingest import BatchItem
from proxy.ports.ingest_batch import Described, frame_items_py, ndjson_array_py

needs_c = pytest.mark.skipif(
    speedups.frame_items is None and bool(os.environ.get("KPI_SIDECAR_NO_EXTENSIONS")), reason="turned off"
)
BLOCKS = {p: add_header(None, "KPI-Priority", p) for p in ("low", "medium", "high", "critical")}
REFUSED = "refused.subject"


def describe(subject: str, priority: str | None) -> Described | None:
    """A classification as `_describe` returns it: refused for one subject and for critical."""
    if subject == REFUSED or priority == "critical":
        return None
    label = priority or "medium"
    head = b'"subject":%s,"priority":"%s"' % (json.dumps(subject).encode(), label.encode())
    return (subject, label), BLOCKS.get(priority) if priority else None, subject.encode(), head  # type: ignore[return-value]


item_st = st.builds(
    BatchItem,
    subject=st.sampled_from(["a", "orders.eu", "café.x", "orders.eu", "a"]),
    data=st.one_of(st.none(), st.text(max_size=30)),
    priority=st.sampled_from([None, None, "low", "medium", "high"]),
)
odd_st = st.sampled_from(
    [
        BatchItem(subject="a", reply="inbox.1"),
        BatchItem(subject="a", headers={"X": "1"}),
        BatchItem(subject="a", data_base64="eA=="),
        BatchItem(subject=REFUSED, data="x"),
        BatchItem(subject="a", priority="critical"),
        BatchItem(subject="a", data="\udc80"),
        BatchItem(subject="a", data="x" * 200),
    ]
)


@needs_c
@settings(max_examples=400, deadline=None)
@given(
    items=st.lists(item_st, min_size=1, max_size=30),
    odd=st.one_of(st.none(), st.tuples(st.integers(0, 30), odd_st)),
    max_payload=st.sampled_from([60, 1 << 20]),
)
def test_c_frames_a_batch_as_the_reference_does(
    items: list[BatchItem], odd: tuple[int, BatchItem] | None, max_payload: int
) -> None:
    if odd is not None:
        items = [*items[: odd[0]], odd[1], *items[odd[0] :]]
    want = frame_items_py(items, describe, max_payload)
    got = speedups.frame_items(items, describe, max_payload)  # type: ignore[misc]
    assert got == want
    if want is None:
        return
    frames, answers, groups = want
    parser = ClientParser(max_payload=-1)
    parser.headers = True
    ops = list(parser.feed_data(frames))
    assert [(op.subject, op.payload) for op in ops] == [(i.subject, (i.data or "").encode()) for i in items]
    assert [op.headers if op.hdr_size else None for op in ops] == [
        BLOCKS[i.priority] if i.priority else None for i in items
    ]
    decoded = json.loads(answers)
    assert [a["index"] for a in decoded] == list(range(len(items)))
    assert all(a["status"] == 202 and a["result"] == "forwarded" and a["reason"] is None for a in decoded)
    assert [a["size"] for a in decoded] == [op.size for op in ops]
    assert sum(groups.values()) == len(items)


@needs_c
def test_an_empty_batch_and_a_failing_classification() -> None:
    assert speedups.frame_items([], describe, 10) == frame_items_py([], describe, 10) == (b"", b"[]", {})  # type: ignore[misc]

    def broken(subject: str, priority: str | None) -> Described | None:
        raise RuntimeError("classification failed")

    with pytest.raises(RuntimeError, match="classification failed"):
        speedups.frame_items([BatchItem(subject="a")], broken, 10)  # type: ignore[misc]
    # Items of another type are read with getattr: the same answers, or the same error.

    class Plain:
        def __init__(self, subject: str, data: str | None = None, **rest: str | None) -> None:
            self.subject, self.data = subject, data
            self.data_base64 = self.headers = self.priority = self.reply = None
            for name, value in rest.items():
                setattr(self, name, value)

    others = [Plain("a", "x"), Plain("b", priority="high"), BatchItem(subject="a", data="é")]
    assert speedups.frame_items(others, describe, 100) == frame_items_py(others, describe, 100)  # type: ignore[misc, arg-type]
    missing = Plain("a")
    del missing.reply
    with pytest.raises(AttributeError):
        speedups.frame_items([missing], describe, 100)  # type: ignore[misc]
    with pytest.raises(TypeError):
        speedups.frame_items([BatchItem(subject="a")], lambda s, p: ("g", b"x"), 10)  # type: ignore[misc]


@needs_c
@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"{", b"}", b"{}", b'{"a":1}', b" ", b"\t", b"\r", b"\n", b"\x0b", b"\x0c", b"\x85", b"x"]
        ),
        max_size=30,
    )
)
def test_c_joins_ndjson_lines_as_the_reference_does(parts: list[bytes]) -> None:
    text = b"".join(parts)
    assert speedups.ndjson_array(text) == ndjson_array_py(text)  # type: ignore[misc]
