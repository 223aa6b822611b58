"""Mutated wire data (bytes deleted, inserted, overwritten; reads cut anywhere): the C scanners and the
Python parser still agree op for op, and batch mode still expands to the plain parser's ops. Seeded, so
a failure reproduces; the seed is in the assertion message."""

from __future__ import annotations

import random

import pytest

from proxy.nats import protocol as nats_protocol
from proxy.nats.protocol import ClientParser, ServerParser, encode_connect, encode_msg, encode_pub
from tests.protocol.chunkings import feed_reads
from tests.protocol.test_batch import expand as expand_pubs
from tests.protocol.test_msg_routing import expand as expand_msgs
from tests.protocol.test_roundtrip import cut

HEADERS = [None, b"NATS/1.0\r\n\r\n", b"NATS/1.0\r\nKPI-Priority: 1\r\n\r\n"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(0, 3)):
        op = rng.random()
        i = rng.randrange(len(buf) + 1)
        if op < 0.33 and buf:
            del buf[min(i, len(buf) - 1)]
        elif op < 0.66:
            buf[i:i] = bytes([rng.choice(b" \t\r\n0123456789PUBMSGH\xff")])
        elif buf:
            buf[min(i, len(buf) - 1)] = rng.randrange(256)
    return bytes(buf)


def cut_anywhere(rng: random.Random, blob: bytes) -> list[bytes]:
    return cut(blob, [rng.randrange(len(blob) + 1) for _ in range(rng.randint(0, 4))])


def body(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("seed", range(4))
def test_client_direction(seed: int) -> None:
    rng = random.Random(seed)
    for i in range(500):
        pubs = b"".join(
            encode_pub(rng.choice(["a", "b.c", "é"]), rng.choice([None, "r"]), body(rng), rng.choice(HEADERS))
            for _ in range(rng.randint(1, 6))
        )
        blob = encode_connect({"verbose": False, "pedantic": False, "headers": True}) + mutate(rng, pubs)
        reads = cut_anywhere(rng, blob)
        max_payload = rng.choice([-1, 5, 1 << 20])

        def batch(scan: object, max_payload: int = max_payload) -> ClientParser:
            parser = ClientParser(max_payload=max_payload, scan=scan)  # type: ignore[arg-type]
            parser.batch = True
            return parser

        with_c = feed_reads(batch(nats_protocol.scan_pubs), reads)
        assert with_c == feed_reads(batch(None), reads), (seed, i, reads)
        assert expand_pubs(with_c) == feed_reads(ClientParser(max_payload=max_payload), reads), (
            seed,
            i,
            reads,
        )


@pytest.mark.parametrize("seed", range(4))
def test_server_direction(seed: int) -> None:
    rng = random.Random(seed)
    for i in range(500):
        msgs = b"".join(
            encode_msg(
                rng.choice([b"a", b"b.c"]), rng.choice([b"1", b"7"]), rng.choice([None, b"r"]), -1, body(rng)
            )
            for _ in range(rng.randint(1, 6))
        )
        reads = cut_anywhere(rng, mutate(rng, msgs))
        parser = ServerParser()
        parser.batch = True
        assert expand_msgs(feed_reads(parser, reads)) == feed_reads(ServerParser(), reads), (seed, i, reads)
