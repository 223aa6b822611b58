"""Ways of cutting one byte stream into reads, to check a parser's ops never depend on the cutting."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol


class Feedable(Protocol):
    """Anything with a sans-I/O `feed_data`."""

    def feed_data(self, data: bytes) -> list: ...


def feed_reads(parser: Feedable, reads: Iterable[bytes]) -> list:
    """Feed each read in turn and return all ops in order."""
    ops: list = []
    for data in reads:
        ops.extend(parser.feed_data(data))
    return ops


def split_offsets(data: bytes, large: bool = False) -> Iterator[int]:
    """Every offset, or for a large stream every offset near its ends plus a stride through the middle."""
    if not large:
        yield from range(len(data) + 1)
        return
    edge = 256
    yield from range(min(edge, len(data)))
    yield from range(edge, len(data) - edge, 65_521)
    yield from range(max(edge, len(data) - edge), len(data) + 1)


def two_reads(data: bytes, at: int) -> list[bytes]:
    """The stream cut once, at `at`."""
    return [data[:at], data[at:]]


def bytewise(data: bytes, large: bool = False) -> Iterator[bytes]:
    """One byte per read; for a large stream only near its ends, with one big read in between."""
    edge = 256
    if not large or len(data) <= 2 * edge:
        for i in range(len(data)):
            yield data[i : i + 1]
        return
    for i in range(edge):
        yield data[i : i + 1]
    yield data[edge : len(data) - edge]
    for i in range(len(data) - edge, len(data)):
        yield data[i : i + 1]


def assert_chunking_invariant(
    make: Callable[[], Feedable], data: bytes, expected: list, large: bool = False
) -> None:
    """The same ops whole, cut at every offset, and one byte at a time."""
    assert feed_reads(make(), [data]) == expected
    for at in split_offsets(data, large):
        assert feed_reads(make(), two_reads(data, at)) == expected, f"cut at offset {at}"
    assert feed_reads(make(), bytewise(data, large)) == expected, "one byte at a time"
