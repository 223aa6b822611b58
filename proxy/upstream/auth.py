"""Upstream credentials: the CONNECT options (token, user/password, JWT creds, nkey), nonce signing, TLS.

One job: say how the sidecar proves who it is to the NATS cluster. Pure functions of the
`UpstreamConfig`, the server's INFO and the URL; `proxy.upstream.connection` calls them during the
handshake. nkeys is imported only when a creds or seed file is configured.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.config.schema import UpstreamConfig
from proxy.errors import UpstreamUnavailable


def connect_options(cfg: UpstreamConfig, info: dict[str, Any], parts: Any, tls: bool) -> dict[str, Any]:
    """The CONNECT options for the server that sent `info`, at the URL split into `parts`."""
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "tls_required": tls,
        "name": cfg.name,
        "lang": "python-kpi-sidecar",
        "version": __version__,
        "protocol": 1,
        "headers": True,
        "no_responders": True,
        "echo": True,
    }
    user = cfg.user or (parts.username if parts.username else None)
    password = cfg.password or (parts.password if parts.password else None)
    if cfg.token:
        options["auth_token"] = cfg.token
    elif user and password is None:
        options["auth_token"] = user
    if user and password is not None:
        options["user"] = user
        options["pass"] = password
    nonce = info.get("nonce")
    if cfg.creds_file:
        jwt, seed = read_creds(Path(cfg.creds_file))
        options["jwt"] = jwt
        if nonce:
            options["sig"] = sign_nonce(seed, nonce)
    elif cfg.nkey_seed_file:
        seed = Path(cfg.nkey_seed_file).read_bytes().strip()
        import nkeys

        options["nkey"] = nkeys.from_seed(seed).public_key.decode()
        if nonce:
            options["sig"] = sign_nonce(seed, nonce)
    return options


def ssl_context(cfg: UpstreamConfig) -> ssl.SSLContext:
    """The TLS context for the upstream: its CA, client certificate and verification settings."""
    tls = cfg.tls
    ctx = ssl.create_default_context(cafile=tls.ca_file if tls else None)
    if tls is not None:
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    return ctx


def sign_nonce(seed: bytes, nonce: str) -> str:
    """Sign the server's nonce with an nkey seed, as NATS clients do."""
    import nkeys

    return base64.b64encode(nkeys.from_seed(seed).sign(nonce.encode())).decode()


def read_creds(path: Path) -> tuple[str, bytes]:
    """The user JWT and nkey seed of a NATS `.creds` file."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN"):
            current = []
        elif line.startswith("------END") or line.startswith("-----END"):
            if current is not None:
                blocks.append("".join(current))
            current = None
        elif current is not None and line:
            current.append(line)
    if len(blocks) < 2:
        raise UpstreamUnavailable(f"{path}: not a NATS credentials file (need a JWT and a seed)")
    return blocks[0], blocks[1].encode()
