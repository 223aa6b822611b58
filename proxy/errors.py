"""The sidecar's error hierarchy. A shed message is a return value, never an exception."""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error the sidecar raises on purpose."""


class ConfigError(ProxyError):
    """A configuration file or update is invalid; `errors` lists each problem with its `$.path`."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else [message]


class ProtocolError(ProxyError):
    """A NATS protocol violation; `err_text` is nats-server's exact wording, sent as `-ERR '<err_text>'`."""

    def __init__(self, err_text: str, *, fatal: bool = True) -> None:
        super().__init__(err_text)
        self.err_text = err_text
        self.fatal = fatal


class UpstreamUnavailable(ProxyError):
    """The upstream NATS server cannot be reached right now."""
