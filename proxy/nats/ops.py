"""The NATS protocol's ops as frozen msgspec Structs, the limits and the `-ERR` texts of nats-server 2.9."""

from __future__ import annotations

import msgspec

MAX_CONTROL_LINE = 4096
DEFAULT_MAX_PAYLOAD = 1_048_576
# Upstream INFO lines grow with the cluster (connect_urls) and MSG lines carry two subjects, so the
# client side of the upstream connection only needs a memory bound, not nats-server's 4 KiB.
MAX_SERVER_CONTROL_LINE = 1_048_576

# -ERR texts exactly as nats-server 2.9.10 sends them (verified against the binary; see
# tests/protocol/test_conformance.py).
ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"
ERR_MAX_CONTROL_LINE = "maximum control line exceeded"
ERR_BAD_CLIENT_PROTOCOL = "invalid client protocol"
ERR_NO_RESPONDERS_REQUIRES_HEADERS = "no responders requires headers support"
# Non-fatal ones the shell sends itself: SUB on a bad subject, PUB on a bad subject in pedantic mode.
ERR_INVALID_SUBJECT = "Invalid Subject"
ERR_INVALID_PUBLISH_SUBJECT = "Invalid Publish Subject"
ERR_MAX_SUBSCRIPTIONS = "maximum subscriptions exceeded"
# Malformed PUB/HPUB/SUB/UNSUB arguments, bad CONNECT JSON, HPUB without headers, -ERR from a client:
# nats-server logs the reason and closes the socket without a word.
ERR_SILENT_CLOSE = ""
# Malformed data from the upstream server (never sent to anyone, only logged by the shell).
ERR_PARSER = "Parser Error"

PING_FRAME = b"PING\r\n"
PONG_FRAME = b"PONG\r\n"
OK_FRAME = b"+OK\r\n"


# --------------------------------------------------------------------------------------------------- ops


class Connect(msgspec.Struct, frozen=True, gc=False):
    """CONNECT from an application: its JSON options object, as sent (keys not normalised)."""

    options: dict


class Ping(msgspec.Struct, frozen=True, gc=False):
    """PING from either side; use the `PING` singleton."""


class Pong(msgspec.Struct, frozen=True, gc=False):
    """PONG from either side; use the `PONG` singleton."""


class Ok(msgspec.Struct, frozen=True, gc=False):
    """+OK from the server; use the `OK` singleton."""


PING = Ping()
PONG = Pong()
OK = Ok()


class Pub(msgspec.Struct, frozen=True, gc=False):
    """PUB or HPUB from an application; `frame` is the whole op as received, ready to forward verbatim."""

    subject: str
    reply: str | None
    hdr_size: int
    frame: bytes
    body_start: int

    @property
    def headers(self) -> bytes | None:
        """The header block ("NATS/1.0\\r\\n...\\r\\n\\r\\n") of an HPUB, None for a PUB."""
        if self.hdr_size < 0:
            return None
        return self.frame[self.body_start : self.body_start + self.hdr_size]

    @property
    def payload(self) -> bytes:
        """The payload, without headers and without the trailing CRLF."""
        start = self.body_start + self.hdr_size if self.hdr_size > 0 else self.body_start
        return self.frame[start:-2]

    @property
    def size(self) -> int:
        """Total body size (headers + payload), as announced in the control line."""
        return len(self.frame) - self.body_start - 2


_NO_REQUESTS: dict[str, int] = {}


class PubRun(msgspec.Struct, frozen=True, gc=False):
    """Consecutive PUBs and HPUBs whose priority does not depend on a KPI-Priority header, from a parser
    with `batch` on: their frames as one bytes object, the count per subject, the total, and per subject
    the count of those with a reply subject (requests, by their protocol role)."""

    frames: bytes
    counts: dict[str, int]
    n: int
    requests: dict[str, int] = msgspec.field(default_factory=dict)


class MsgRun(msgspec.Struct, frozen=True, gc=False):
    """Consecutive plain MSGs (no headers) from a server parser with `batch` on, as nats-server wrote
    them: canonical frames, read one by one with `next_msg`, or routed in C with `route_msgs`."""

    frames: bytes


class Sub(msgspec.Struct, frozen=True, gc=False):
    """SUB from an application."""

    subject: str
    queue: str | None
    sid: str


class Unsub(msgspec.Struct, frozen=True, gc=False):
    """UNSUB from an application; `max_msgs` is None when nats-server would unsubscribe at once."""

    sid: str
    max_msgs: int | None


class Err(msgspec.Struct, frozen=True, gc=False):
    """A protocol error in sequence: `text` as in `-ERR '<text>'` ("" = close silently), `fatal` = close."""

    text: str
    fatal: bool


class Info(msgspec.Struct, frozen=True, gc=False):
    """INFO from the upstream server: its JSON options object."""

    options: dict


class Msg(msgspec.Struct, frozen=True, gc=False):
    """MSG or HMSG from the upstream server; `body` is headers + payload without the trailing CRLF."""

    subject: bytes
    sid: int
    reply: bytes | None
    hdr_size: int
    body: bytes

    @property
    def headers(self) -> bytes | None:
        """The header block of an HMSG, None for a MSG."""
        return None if self.hdr_size < 0 else self.body[: self.hdr_size]

    @property
    def payload(self) -> bytes:
        """The payload without headers."""
        return self.body[self.hdr_size :] if self.hdr_size > 0 else self.body


ClientOp = Connect | Ping | Pong | Pub | PubRun | Sub | Unsub | Err
ServerOp = Info | Msg | MsgRun | Ping | Pong | Ok | Err
