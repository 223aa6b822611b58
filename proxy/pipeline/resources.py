"""Process and container resource readings: RSS, CPU percent of one core, cgroup v2 limits."""

from __future__ import annotations

from pathlib import Path

import msgspec
import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


class ResourceSample(msgspec.Struct, frozen=True):
    """One reading of the process's resources."""

    memory_mb: float
    rss_mb: float
    cpu_percent: float
    cpu_quota_cores: float | None
    cgroup_memory_mb: float | None
    cgroup_memory_limit_mb: float | None


class ResourceMonitor:
    """Reads RSS and CPU like `top` (percent of one core), and the container's cgroup v2 limits."""

    def __init__(self, cgroup_root: Path = CGROUP_ROOT) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self._cgroup_root = cgroup_root
        self.last = ResourceSample(
            memory_mb=0,
            rss_mb=0,
            cpu_percent=0,
            cpu_quota_cores=None,
            cgroup_memory_mb=None,
            cgroup_memory_limit_mb=None,
        )

    def sample(self) -> ResourceSample:
        rss_mb = self._process.memory_info().rss / 1_048_576
        cpu = self._process.cpu_percent(None)
        current, limit = self._cgroup_memory()
        # Inside a container the cgroup's charge (page cache included) is what the OOM killer looks at.
        memory_mb = current if current is not None and limit is not None else rss_mb
        self.last = ResourceSample(
            memory_mb=memory_mb,
            rss_mb=rss_mb,
            cpu_percent=cpu,
            cpu_quota_cores=self._cpu_quota(),
            cgroup_memory_mb=current,
            cgroup_memory_limit_mb=limit,
        )
        return self.last

    def _read(self, name: str) -> str | None:
        try:
            return (self._cgroup_root / name).read_text().strip()
        except OSError:
            return None

    def _cgroup_memory(self) -> tuple[float | None, float | None]:
        current = self._read("memory.current")
        limit = self._read("memory.max")
        if current is None or limit is None or limit == "max":
            return (int(current) / 1_048_576 if current and current.isdigit() else None), None
        return int(current) / 1_048_576, int(limit) / 1_048_576

    def _cpu_quota(self) -> float | None:
        text = self._read("cpu.max")
        if not text:
            return None
        quota, _, period = text.partition(" ")
        if quota == "max" or not period:
            return None
        return int(quota) / int(period)
