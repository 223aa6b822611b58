"""Sampling profiles of the running sidecar (py-spy), summarised as self and inclusive time per function."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# py-spy's raw format: "frame;frame;...;frame COUNT", each frame "function (file:line)".
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Frames that only carry the event loop or the CLI down to the protocol callbacks.
_PLUMBING = ("<module>", "_run_module_as_main", "_run_code", "main", "cmd_run", "run", "serve")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def start_recording(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start py-spy sampling `pid` for `seconds` into `out` (raw collapsed stacks, line numbers kept)."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    # Blocking mode (the default) pauses the process for each sample: exact line numbers, ~1 % overhead.
    # --gil: only samples of the thread holding the GIL, i.e. the event loop's work, not idle helpers.
    cmd += ["--rate", str(rate), "--format", "raw", "--output", str(out), "--gil"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(file: str) -> str:
    for marker in ("proxy/", "policies/", "bench/"):
        if file.startswith(marker):
            return file
        at = file.rfind("/" + marker)
        if at >= 0:
            return file[at + 1 :]
    return file.rsplit("/", 1)[-1]


def summarize(raw: Path, seconds: float, rate: int, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function and self share per line, from a raw py-spy file."""
    self_func: Counter[str] = Counter()
    incl_func: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        funcs: list[str] = []
        lines: list[str] = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m is None:
                funcs.append(frame)
                lines.append(frame)
                continue
            name = f"{_short(m['file'])}:{m['func']}"
            funcs.append(name)
            lines.append(f"{name}:{m['line']}" if m["line"] else name)
        if not funcs:
            continue
        self_func[funcs[-1]] += count
        self_line[lines[-1]] += count
        for name in set(funcs):
            incl_func[name] += count
    if total == 0:
        return {"samples": 0, "busy": 0.0, "self": [], "inclusive": [], "lines": []}

    def share(counter: Counter[str], skip_plumbing: bool = False) -> list[tuple[str, float]]:
        rows = []
        for name, count in counter.most_common():
            if skip_plumbing and name.rsplit(":", 1)[-1] in _PLUMBING:
                continue
            rows.append((name, round(100.0 * count / total, 1)))
            if len(rows) == top:
                break
        return rows

    return {
        "samples": total,
        # With --gil only the thread holding the GIL is sampled: samples / expected = share of time busy.
        "busy": round(100.0 * total / max(1.0, seconds * rate), 1),
        "self": share(self_func),
        "inclusive": share(incl_func, skip_plumbing=True),
        "lines": share(self_line),
    }
