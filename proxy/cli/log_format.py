"""One log format for the whole process: plain lines by default, one JSON object per line for collectors.

Every logger (the sidecar's, aiohttp's, asyncio's, Python warnings) goes through the root handler that
`configure_logging` installs, so a line never comes out in two formats or twice.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, TextIO

LOG_FORMATS: Final = ("plain", "json")
PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# `extra=` keys that the JSON format carries as fields of their own (e.g. the "ready" line's ports).
EXTRA_FIELDS: Final = ("event", "ports", "urls", "trigger")


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...extra}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str = "plain", stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers by one handler in `fmt` (plain or json) on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
