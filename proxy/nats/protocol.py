"""Sans-I/O NATS wire codec: bytes in, typed ops out, plus encoders. This module is its public face.

The rooms (like h11): `ops.py` (the ops, limits and `-ERR` texts), `parser.py` (what both parsers share),
`client_parser.py` (`ClientParser`), `server_parser.py` (`ServerParser`), `encoders.py` (bytes out, subjects,
headers), `speedups.py` (the optional C scanner, `_speedups.c`). Import from here.

No sockets, no asyncio, no clocks. `ClientParser` is the server side of an application connection and
reproduces nats-server 2.9's client parser (`server/parser.go`, `server/client.go`): the same ops, the same
`-ERR` texts and the same verdict on what closes the connection. `ServerParser` is the client side of the
sidecar's upstream connection. Both scan with `find(b"\\n", pos)` and move an index, keep only the unparsed
tail, and copy bytes only when a frame straddles two reads.

Speed: in `batch` mode the client parser hands runs of plain PUBs to `scan_pubs` from the optional C
module `proxy.nats._speedups` when it is built (`SPEEDUPS`), which counts them without a Python object per
frame; it stops at anything it is not sure about and the Python code below takes over, so the ops and
errors are the same with and without it (the protocol tests run both). In the other direction the server
parser in `batch` mode returns runs of plain MSG frames as one `MsgRun` (`scan_msgs`), which the sidecar
hands to `route_msgs` to rewrite each frame's sid straight into its application's buffer.
`KPI_SIDECAR_NO_EXTENSIONS=1` turns all of it off.

Error conventions: a protocol error becomes `Err(text, fatal)` in sequence in the op list; after a fatal one
the parser is dead and returns no more ops. `Err.text == ""` means nats-server closes the connection without
sending any `-ERR` (it only logs), and `encode_err("")` is `b""` to match.

Known, deliberate differences from nats-server 2.9 (only reachable by hand-crafted input):
- nats-server enforces `max_control_line` only when a control line is split across two socket reads, so
  its verdict depends on TCP segmentation; here every control line whose argument exceeds the limit is
  refused, so the verdict never depends on how the bytes were chunked.
- nats-server accepts unbounded garbage after `PING`/`PONG`/`+OK` and unbounded blanks before arguments;
  here a whole control line is capped at `max_control_line + 1024` bytes to bound memory.
- nats-server type-checks an `INFO` sent by a client against its Info struct; here only the JSON syntax
  and the top-level type are checked.
- A stray CR inside arguments is handled as nats-server does when the line arrives in one read.
- A client's `HMSG <anything>\\r\\n\\r\\n` is swallowed without an op; nats-server treats it as an empty
  publish and answers `+OK` in verbose mode.
"""

from __future__ import annotations

from proxy.nats.client_parser import ClientParser
from proxy.nats.encoders import (
    add_header,
    encode_connect,
    encode_err,
    encode_info,
    encode_msg,
    encode_pub,
    encode_sub,
    encode_unsub,
    header_value,
    is_valid_publish_subject,
    is_valid_subject,
    next_msg,
    split_pub,
    status_message_headers,
)
from proxy.nats.ops import (
    DEFAULT_MAX_PAYLOAD,
    ERR_BAD_CLIENT_PROTOCOL,
    ERR_INVALID_PUBLISH_SUBJECT,
    ERR_INVALID_SUBJECT,
    ERR_MAX_CONTROL_LINE,
    ERR_MAX_PAYLOAD,
    ERR_MAX_SUBSCRIPTIONS,
    ERR_NO_RESPONDERS_REQUIRES_HEADERS,
    ERR_PARSER,
    ERR_SILENT_CLOSE,
    ERR_UNKNOWN_OP,
    MAX_CONTROL_LINE,
    MAX_SERVER_CONTROL_LINE,
    OK,
    OK_FRAME,
    PING,
    PING_FRAME,
    PONG,
    PONG_FRAME,
    ClientOp,
    Connect,
    Err,
    Info,
    Msg,
    MsgRun,
    Ok,
    Ping,
    Pong,
    Pub,
    PubRun,
    ServerOp,
    Sub,
    Unsub,
)
from proxy.nats.server_parser import ServerParser
from proxy.nats.speedups import SPEEDUPS, route_msgs, scan_msgs, scan_pubs

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "ERR_BAD_CLIENT_PROTOCOL",
    "ERR_INVALID_PUBLISH_SUBJECT",
    "ERR_INVALID_SUBJECT",
    "ERR_MAX_CONTROL_LINE",
    "ERR_MAX_PAYLOAD",
    "ERR_MAX_SUBSCRIPTIONS",
    "ERR_NO_RESPONDERS_REQUIRES_HEADERS",
    "ERR_PARSER",
    "ERR_SILENT_CLOSE",
    "ERR_UNKNOWN_OP",
    "MAX_CONTROL_LINE",
    "MAX_SERVER_CONTROL_LINE",
    "OK",
    "OK_FRAME",
    "PING",
    "PING_FRAME",
    "PONG",
    "PONG_FRAME",
    "SPEEDUPS",
    "ClientOp",
    "ClientParser",
    "Connect",
    "Err",
    "Info",
    "Msg",
    "MsgRun",
    "Ok",
    "Ping",
    "Pong",
    "Pub",
    "PubRun",
    "ServerOp",
    "ServerParser",
    "Sub",
    "Unsub",
    "add_header",
    "encode_connect",
    "encode_err",
    "encode_info",
    "encode_msg",
    "encode_pub",
    "encode_sub",
    "encode_unsub",
    "header_value",
    "is_valid_publish_subject",
    "is_valid_subject",
    "next_msg",
    "route_msgs",
    "scan_msgs",
    "scan_pubs",
    "split_pub",
    "status_message_headers",
]
