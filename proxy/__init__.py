"""kpi-sidecar: the asyncio shell (ingest servers, upstream, admin API, CLI) around the policies core."""

__version__ = "0.1.0"
