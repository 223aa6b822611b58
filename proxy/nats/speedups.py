"""The optional C scanner (`proxy/nats/_speedups.c`): imported when built, else None.

`KPI_SIDECAR_NO_EXTENSIONS=1` turns it off; the parsers then run their pure-Python paths (the same ops
and errors: the protocol tests run both).
"""

from __future__ import annotations

import os
from collections.abc import Callable

ScanPubs = Callable[[bytes, int, dict, int, int, bool, dict, dict], int]
ScanMsgs = Callable[[bytes, int, int], int]
RouteMsgs = Callable[[bytes, int, dict, dict], int]
SelectFrames = Callable[[bytes, list], "tuple[bytes, bytes] | None"]
SettleAcks = Callable[[bytes, int, bytes, bytes, dict, "list | None"], int]
StampCritical = Callable[
    [bytes, bytes, int, "bytes | None", int, int], "list[tuple[bytes, bytes, int]] | None"
]
FrameItems = Callable[[list, Callable, int], "tuple[bytes, bytes, dict] | None"]
NdjsonArray = Callable[[bytes], "tuple[bytes, int] | None"]
ScanGroups = Callable[[bytes, list, int], "tuple[bytes, bytes, bytes] | None"]
scan_pubs: ScanPubs | None = None
scan_msgs: ScanMsgs | None = None
route_msgs: RouteMsgs | None = None
select_frames: SelectFrames | None = None
settle_acks: SettleAcks | None = None
stamp_critical: StampCritical | None = None
frame_items: FrameItems | None = None
ndjson_array: NdjsonArray | None = None
scan_groups: ScanGroups | None = None
if not os.environ.get("KPI_SIDECAR_NO_EXTENSIONS"):
    try:
        from proxy.nats._speedups import (
            frame_items,
            ndjson_array,
            route_msgs,
            scan_groups,
            scan_msgs,
            scan_pubs,
            select_frames,
            settle_acks,
            stamp_critical,
        )
    except ImportError:  # not built (no C compiler at install time): the pure-Python parser alone
        scan_pubs = scan_msgs = route_msgs = select_frames = settle_acks = stamp_critical = None
        frame_items = ndjson_array = scan_groups = None
SPEEDUPS = scan_pubs is not None
