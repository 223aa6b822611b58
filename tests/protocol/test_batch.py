"""Batch mode: runs of plain PUBs come out as one PubRun, and nothing else changes.

Two properties, for every case of `cases.py` and for random streams, however the bytes are cut:
- expanding each PubRun back into its Pubs gives exactly the ops of the parser without batch mode;
- the C scanner (`proxy._speedups.scan_pubs`, what the sidecar runs) and the pure-Python loop produce the
  very same ops, PubRun boundaries included.
"""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.nats import protocol as nats_protocol
from proxy.nats.protocol import (
    PRIORITY_CODES,
    ClientParser,
    Pub,
    PubRun,
    encode_connect,
    encode_pub,
    header_value,
)
from tests.protocol.cases import CASES, Case
from tests.protocol.chunkings import bytewise, feed_reads, split_offsets, two_reads
from tests.protocol.test_roundtrip import client_ops, cut, encode_client_op

SCAN = nats_protocol.scan_pubs


def test_the_c_scanner_is_built() -> None:
    # setup.py marks the extension optional (an install without a compiler still works), so a broken
    # build would otherwise go unnoticed: the test environment must have it.
    if os.environ.get("KPI_SIDECAR_NO_EXTENSIONS"):
        assert not nats_protocol.SPEEDUPS
    else:
        assert nats_protocol.SPEEDUPS, "proxy.nats._speedups is not built: pip install -e . with a C compiler"


def batch_parser(case: Case | None = None, scan: object = SCAN) -> ClientParser:
    parser = ClientParser(**(case.parser_kwargs if case else {}), scan=scan)  # type: ignore[arg-type]
    parser.batch = True
    return parser


def expand(ops: list) -> list:
    """Each PubRun replaced by the Pubs of its frames (checked against its counts)."""
    out: list = []
    for op in ops:
        if type(op) is not PubRun:
            out.append(op)
            continue
        split = ClientParser(max_payload=-1)
        split.headers = True
        pubs = split.feed_data(op.frames)
        assert all(type(p) is Pub for p in pubs), pubs
        counts: dict[str, int] = {}
        priorities: dict[tuple[str, int, int], int] = {}
        for p in pubs:
            counts[p.subject] = counts.get(p.subject, 0) + 1
            # A KPI-Priority header joins a run only with a value of letters; its priority is counted.
            value = header_value(p.headers, "KPI-Priority") if p.headers else None
            assert value is None or value == "" or (value.isascii() and value.isalpha()), p
            code = PRIORITY_CODES.get(value.lower().encode(), 0) if value else 0
            if code:
                key = (p.subject, code, int(p.reply is not None))
                priorities[key] = priorities.get(key, 0) + 1
        assert (counts, op.n, priorities) == (op.counts, len(pubs), op.priorities)
        out.extend(pubs)
    return out


def check(make_c, make_py, reads: list[bytes], expected: list) -> None:  # type: ignore[no-untyped-def]
    got_c = feed_reads(make_c(), reads)
    got_py = feed_reads(make_py(), reads)
    assert got_c == got_py
    assert expand(got_c) == expected


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_cases_in_batch_mode(case: Case) -> None:
    def make_c() -> ClientParser:
        return batch_parser(case)

    def make_py() -> ClientParser:
        return batch_parser(case, scan=None)

    check(make_c, make_py, [case.data], case.ops)
    for at in split_offsets(case.data, case.large):
        check(make_c, make_py, two_reads(case.data, at), case.ops)
    check(make_c, make_py, list(bytewise(case.data, case.large)), case.ops)


def test_a_run_is_one_op_with_counts_per_subject() -> None:
    frames = (
        encode_pub("a", None, b"1")
        + encode_pub("b", "inbox.1", b"22")  # requests too
        + encode_pub("a", None, b"", b"NATS/1.0\r\nTrace: x\r\n\r\n")  # and headers
    )
    by_header = encode_pub("a", None, b"q", b"NATS/1.0\r\nkpi-PRIORITY: low\r\n\r\n")
    unsure = encode_pub("a", None, b"q", b"NATS/1.0\r\nKPI-Priority: 1\r\n\r\n")
    parser = batch_parser()
    parser.headers = True
    ops = parser.feed_data(frames + by_header + frames + unsure + frames)
    hdr = unsure.index(b"\r\n\r\n") + 4 - (unsure.index(b"\n") + 1)
    assert ops == [
        # b's frames are requests; the KPI-Priority header's low is counted by (subject, code, request).
        PubRun(frames + by_header + frames, {"a": 5, "b": 2}, 7, {"b": 2}, {("a", 1, 0): 1}),
        # A value that is not a word: decided on its own.
        Pub("a", None, hdr, unsure, unsure.index(b"\n") + 1),
        PubRun(frames, {"a": 2, "b": 1}, 3, {"b": 1}),
    ]


@pytest.mark.parametrize("scan", [SCAN, None], ids=["c", "python"])
def test_header_priorities_are_read_once_as_classify_reads_them(scan: object) -> None:
    def hpub(block: bytes, reply: str | None = None) -> bytes:
        return encode_pub("s", reply, b"x", b"NATS/1.0\r\n" + block + b"\r\n")

    frames = [
        hpub(b"KPI-Priority: medium\r\n"),
        hpub(b"kpi-priority:HIGH\r\n", "inbox.1"),
        hpub(b"Trace: 1\r\nKpi-Priority: \t Low \t\r\nKPI-Priority: high\r\n"),  # the first one counts
        hpub(b"KPI-Priority: urgent\r\n"),  # a word that names no priority: the rule decides (0)
        hpub(b"KPI-Priority:\r\n"),
        hpub(b"X-KPI-Priority: high\r\nX: kpi-priority: low\r\n"),  # not the header itself
        hpub(b"KPI-Priority: Critical\r\n"),
    ]
    parser = batch_parser(scan=scan)
    parser.headers = True
    (op,) = parser.feed_data(b"".join(frames))
    assert type(op) is PubRun
    assert op.counts == {"s": 7} and op.requests == {"s": 1}
    assert op.priorities == {("s", 2, 0): 1, ("s", 3, 1): 1, ("s", 1, 0): 1, ("s", 4, 0): 1}
    for odd in (b"KPI-Priority: h\xc3\xa9gh\r\n", b"KPI-Priority: hi gh\r\n", b"KPI-Priority: \x0bhigh\r\n"):
        parser = batch_parser(scan=scan)
        parser.headers = True
        ops = parser.feed_data(frames[0] + hpub(odd) + frames[0])
        assert [type(o) for o in ops] == [PubRun, Pub, PubRun], odd


# Subjects the scanner must either take exactly as the Python loop does or leave to it: non-ASCII,
# invalid UTF-8, control bytes, DEL, and tokens that look like numbers.
odd_subjects = st.sampled_from(
    [b"caf\xc3\xa9", b"\xff\xfe", b"a\x7fb", b"a\x01b", b"a\rb", b"12", b"\xe2\x82", b"x" * 300]
)
plain_pubs = st.tuples(
    odd_subjects | st.text(string.ascii_letters + ".>*", min_size=1, max_size=6).map(str.encode),
    st.binary(max_size=40),
).map(lambda sp: b"PUB %s %d\r\n%s\r\n" % (sp[0], len(sp[1]), sp[1]))
raw_lines = st.sampled_from(
    [
        b"PUB a 3\r\nabcd\r\n",
        b"PUB a  1\r\nx\r\n",
        b"PUB a 0012\r\n" + b"x" * 12 + b"\r\n",
        b"PUB a 1234567890\r\n",
        b"PUB a\t1\r\nx\r\n",
        b"PUB\ta \t 1\r\nx\r\n",
        b"PUB  a  2\r\nxy\r\n",
        b"PUB a 1 \r\nx\r\n",
        b"PUB a\x7f 1\r\nx\r\n",
        b"PUB a 1\nx\r\n",
        b"PUB a r 1\r\nx\r\n",
        b"PUB a \xff 1\r\nx\r\n",
        b"HPUB a 12 13\r\nNATS/1.0\r\n\r\nx\r\n",
        encode_pub("a", "r", b"", b"NATS/1.0\r\nKPI-Priority: high\r\n\r\n"),
        encode_pub("a", None, b"xy", b"NATS/1.0\r\nKPI-Priority: low\r\n\r\n"),
        encode_pub("b", None, b"", b"NATS/1.0\r\nkpi-priority:  CRITICAL\t\r\n\r\n"),
        encode_pub("a", None, b"", b"NATS/1.0\r\nKPI-Priority: 1\r\n\r\n"),
        encode_pub("a", None, b"", b"NATS/1.0\r\nKPI-Priority: nope\r\n\r\n"),
        b"HPUB a 24 24\r\nNATS/1.0\r\nKPI-Priority:\r\n\r\n",
        encode_pub("a", None, b"x", b"NATS/1.0\r\nX: kpi-priority\r\n\r\n"),
        b"HPUB a 4 2\r\nab\r\n",
        b"PING\r\n",
        b"pub a 1\r\nx\r\n",
        b"PUB  \r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(client_ops.map(lambda op: encode_client_op(op)[0]) | plain_pubs | raw_lines, max_size=30),
    offsets=st.lists(st.integers(min_value=0), max_size=8),
    max_payload=st.sampled_from([1 << 20, 8, -1]),
)
def test_random_streams_same_ops_with_and_without_the_scanner(
    parts: list[bytes], offsets: list[int], max_payload: int
) -> None:
    blob = encode_connect({"verbose": False, "pedantic": False, "headers": True}) + b"".join(parts)
    reads = cut(blob, offsets)
    expected = feed_reads(ClientParser(max_payload=max_payload), reads)

    def make_c() -> ClientParser:
        parser = batch_parser(scan=SCAN)
        parser.max_payload = max_payload
        return parser

    def make_py() -> ClientParser:
        parser = batch_parser(scan=None)
        parser.max_payload = max_payload
        return parser

    check(make_c, make_py, reads, expected)


# -- the scanner itself, at its limits


@pytest.mark.skipif(SCAN is None and bool(os.environ.get("KPI_SIDECAR_NO_EXTENSIONS")), reason="turned off")
class TestScanPubs:
    def scan(self, data: bytes, limit: int = 1 << 62, max_line: int = 4096) -> tuple[int, dict]:
        counts: dict[str, int] = {}
        end = SCAN(data, 0, counts, limit, max_line, True)  # type: ignore[misc]
        return end, counts

    def test_stops_at_the_first_frame_it_does_not_own(self) -> None:
        one = b"PUB s 2\r\nhi\r\n"
        for tail in (
            b"PUB s r x 2\r\nhi\r\n",
            b"HPUB s 12 14\r\n",
            encode_pub("s", None, b"", b"NATS/1.0\r\nKpi-Priority: 1\r\n\r\n"),
            b"HPUB s 3 2\r\nabc\r\n",
            b"SUB s 1\r\n",
            b"PUB s 2\r\nh",
            b"PUB s 2\r\nhi\n\n",
        ):
            assert self.scan(one + one + tail) == (2 * len(one), {"s": 2})

    def test_requests_and_headers_join_the_run(self) -> None:
        frames = b"PUB s _INBOX.1 2\r\nhi\r\nHPUB t r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        assert self.scan(frames) == (len(frames), {"s": 1, "t": 1})
        counts: dict[str, int] = {}
        # Unless the connection did not negotiate headers: the Python parser reports that.
        assert SCAN(frames, 0, counts, 100, 100, False) == frames.index(b"HPUB")  # type: ignore[misc]

    def test_payload_limit_and_size_digits(self) -> None:
        frame = b"PUB s 8\r\n12345678\r\n"
        assert self.scan(frame, limit=8) == (len(frame), {"s": 1})
        assert self.scan(frame, limit=7) == (0, {})
        nine = b"PUB s 000000001\r\nx\r\n"
        assert self.scan(nine) == (len(nine), {"s": 1})
        assert self.scan(b"PUB s 0000000001\r\nx\r\n") == (0, {})

    def test_control_line_limit(self) -> None:
        line = b"PUB " + b"s" * 10 + b" 0\r\n"
        assert self.scan(line + b"\r\n", max_line=len(line)) == (len(line) + 2, {"s" * 10: 1})
        assert self.scan(line + b"\r\n", max_line=len(line) - 1) == (0, {})

    def test_subjects_are_decoded_once_per_run_of_equal_subjects(self) -> None:
        frames = b"".join(
            b"PUB %s 0\r\n\r\n" % s for s in (b"caf\xc3\xa9", b"caf\xc3\xa9", b"b", b"caf\xc3\xa9")
        )
        assert self.scan(frames) == (len(frames), {"café": 3, "b": 1})
        assert self.scan(b"PUB \xff 0\r\n\r\n") == (0, {})
        assert self.scan(b"PUB a\x7f 0\r\n\r\n") == (0, {})

    def test_counts_requests_per_subject_when_given_a_dict(self) -> None:
        frames = (
            b"PUB s _INBOX.1 2\r\nhi\r\nPUB s 2\r\nhi\r\nPUB s r 0\r\n\r\n"
            b"HPUB t r 12 12\r\nNATS/1.0\r\n\r\n\r\n"
        )
        counts: dict[str, int] = {}
        requests: dict[str, int] = {}
        assert SCAN(frames, 0, counts, 100, 100, True, requests) == len(frames)  # type: ignore[misc]
        assert (counts, requests) == ({"s": 3, "t": 1}, {"s": 2, "t": 1})
        assert SCAN(frames, 0, {}, 100, 100, True, None) == len(frames)  # type: ignore[misc]

    def test_adds_to_the_counts_it_is_given(self) -> None:
        counts = {"s": 5}
        data = b"xxPUB s 0\r\n\r\n"
        assert SCAN(data, 2, counts, 100, 100, False) == len(data)  # type: ignore[misc]
        assert counts == {"s": 6}

    def test_rejects_bad_arguments(self) -> None:
        with pytest.raises(TypeError):
            SCAN(bytearray(b"PUB s 0\r\n\r\n"), 0, {}, 1, 100, False)  # type: ignore[misc]
        with pytest.raises(ValueError):
            SCAN(b"PUB", 4, {}, 1, 100, False)  # type: ignore[misc]
