"""Strict configuration: each hole a user fell into is an error naming the file, the line and the `$.path`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from proxy.config.schema import ListenConfig, SpoolConfig, UpstreamConfig, load_config, load_layers
from proxy.errors import ConfigError
from tests.conftest import ROOT


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [e.replace(str(path), "config.yaml") for e in caught.value.errors]


def loads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    load_config(path)


# ---- ports ----


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            'listen: {nats: "127.0.0.1:99999"}\n',
            "config.yaml:1: $.listen.nats: port 99999 is out of range: use 1-65535, or 0 for any free port",
        ),
        (
            'listen:\n  nats: "127.0.0.1:4222"\n  admin: "nohost"\n',
            "config.yaml:3: $.listen.admin: expected HOST:PORT such as 127.0.0.1:4222, got 'nohost'",
        ),
        (
            'listen: {http: "127.0.0.1:http"}\n',
            "config.yaml:1: $.listen.http: the port of '127.0.0.1:http' is not a number: "
            "expected HOST:PORT such as 127.0.0.1:4222",
        ),
        (
            'listen: {admin: "::1:3000"}\n',
            "config.yaml:1: $.listen.admin: write an IPv6 address in brackets, e.g. [::1]:3000",
        ),
        (
            'listen: {admin: "bad host:3000"}\n',
            "config.yaml:1: $.listen.admin: 'bad host' in 'bad host:3000' is not a host name or IP "
            "address: expected HOST:PORT such as 127.0.0.1:4222",
        ),
        (
            'listen: {nats: "127.0.0.1:4222", admin: "127.0.0.1:4222"}\n',
            "config.yaml:1: $.listen.admin: port 4222 is already listen.nats's: each port needs its own",
        ),
    ],
)
def test_listen_addresses_are_checked_in_words(tmp_path: Path, text: str, error: str) -> None:
    assert errors_of(tmp_path, text) == [error]


@pytest.mark.parametrize(
    "address", ["127.0.0.1:0", "127.0.0.1:1", "0.0.0.0:65535", "[::1]:3000", ":3000", "sidecar.local:80"]
)
def test_valid_listen_addresses(tmp_path: Path, address: str) -> None:
    # Port 0 is "any free port" (the tests use it; the ports are logged and written to --ports-file).
    loads(tmp_path, f'listen: {{admin: "{address}"}}\n')


def test_two_listeners_on_port_0_are_fine(tmp_path: Path) -> None:
    loads(tmp_path, 'listen: {nats: "127.0.0.1:0", http: "127.0.0.1:0", admin: "127.0.0.1:0"}\n')


# ---- upstream URLs ----


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1:4222", "http:// is not a NATS URL: use nats://HOST:PORT or tls://HOST:PORT"),
        (
            "ws://127.0.0.1:8080",
            "ws:// (NATS over WebSocket) is not supported towards the upstream: use the server's client "
            "port with nats:// or tls:// (4222 by default)",
        ),
        (
            "wss://nats.example:443",
            "wss:// (NATS over WebSocket) is not supported towards the upstream: use the server's client "
            "port with nats:// or tls:// (4222 by default)",
        ),
        ("nats://127.0.0.1:99999", "the port of 'nats://127.0.0.1:99999' is not a number in 1-65535"),
        (
            "nats://127.0.0.1:0",
            "port 0 in 'nats://127.0.0.1:0': an upstream server needs its real port (4222 by default)",
        ),
        ("nats://:4222", "'nats://:4222' names no host: expected nats://HOST:PORT"),
        ("", "an empty server URL: expected nats://HOST:PORT"),
        (
            "nats://nats:4222/x",
            "'nats://nats:4222/x' has a path or query; a NATS URL is only nats://[USER:PASS@]HOST[:PORT]",
        ),
    ],
)
def test_upstream_urls_the_sidecar_cannot_use(tmp_path: Path, url: str, error: str) -> None:
    text = f'upstream:\n  servers:\n    - "nats://ok:4222"\n    - "{url}"\n'
    assert errors_of(tmp_path, text) == [f"config.yaml:4: $.upstream.servers[1]: {error}"]


@pytest.mark.parametrize(
    "url", ["nats://nats:4222", "tls://nats.example:4443", "nats://user:pw@nats", "nats:4222", "NATS://h:1"]
)
def test_upstream_urls_the_sidecar_speaks(tmp_path: Path, url: str) -> None:
    loads(tmp_path, f'upstream: {{servers: ["{url}"]}}\n')


# ---- paths ----


def test_empty_paths_are_refused(tmp_path: Path) -> None:
    text = 'spool: {path: ""}\nupstream:\n  credsFile: " "\n  tls: {caFile: ""}\n'
    # In the file's order.
    assert errors_of(tmp_path, text) == [
        "config.yaml:1: $.spool.path: an empty path: write the spool's directory, or null to run without "
        "a disk spool",
        "config.yaml:3: $.upstream.credsFile: an empty path: write a path (or leave the key out)",
        "config.yaml:4: $.upstream.tls.caFile: an empty path: write a path (or leave the key out)",
    ]


def test_null_spool_path_disables_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("spool: {path: null}\n")
    assert load_config(path).spool.path is None


# ---- YAML ----


def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    text = (
        "backpressure:\n  maxQueueSize: 1000\n  maxPublishRate: 5\n  maxQueueSize: 2000\n"
        "listen: {}\nlisten: {}\n"
    )
    assert errors_of(tmp_path, text) == [
        "config.yaml:4: $.backpressure.maxQueueSize: duplicate key 'maxQueueSize', first written at line 2 "
        "(YAML would silently keep the last one): remove one",
        "config.yaml:6: $.listen: duplicate key 'listen', first written at line 5 (YAML would silently "
        "keep the last one): remove one",
    ]


def test_invalid_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, "upstream:\n  servers: [nats://a:1\nlisten: {}\n")
    assert error.startswith("config.yaml:3:7: invalid YAML: expected ',' or ']'")
    assert "unicode string" not in error


def test_a_list_at_the_top_is_refused(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "- a\n- b\n") == [
        "config.yaml:1: $: expected a mapping of sections (upstream, listen, ...), got a list"
    ]


def test_type_and_range_errors_in_words(tmp_path: Path) -> None:
    text = (
        "backpressure:\n"
        "  maxQueueSize: many\n"
        "  maxPublishRate: 0\n"
        "  enableSampling: 3\n"
        "  maxQueueSzie: 5\n"
        "policies:\n"
        "  - {subject: a.b, priority: urgent}\n"
        "  - {priority: low}\n"
        "  - {subject: c, batchMode: zip}\n"
        "upstream: {servers: []}\n"
    )
    assert errors_of(tmp_path, text) == [
        "config.yaml:2: $.backpressure.maxQueueSize: expected an integer, got 'many'",
        "config.yaml:3: $.backpressure.maxPublishRate: must be greater than 0 (got 0)",
        "config.yaml:4: $.backpressure.enableSampling: expected true or false, got 3",
        "config.yaml:5: $.backpressure.maxQueueSzie: unknown key 'maxQueueSzie' (did you mean "
        "'maxQueueSize'?)",
        "config.yaml:7: $.policies[0].priority: must be one of low, medium, high, critical (got 'urgent')",
        "config.yaml:8: $.policies[1]: missing required key 'subject'",
        "config.yaml:9: $.policies[2].batchMode: must be one of transparent, envelope (got 'zip')",
        "config.yaml:10: $.upstream.servers: needs at least 1 item",
    ]


def test_an_unknown_preset_names_the_line(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "# tuned\npreset: fast\n") == [
        "config.yaml:2: $.preset: unknown preset 'fast'; expected one of default, production, development, "
        "high-frequency, batch-processing"
    ]


def test_an_unknown_section_suggests_the_known_ones(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, "lisen: {}\n")
    assert error == "config.yaml:1: $.lisen: unknown key 'lisen' (did you mean 'listen'?)"


def test_structs_built_in_code_follow_the_same_rules() -> None:
    with pytest.raises(ValueError, match="nats: port 70000 is out of range"):
        ListenConfig(nats="127.0.0.1:70000")
    with pytest.raises(ValueError, match=r"servers\[0\]: http:// is not a NATS URL"):
        UpstreamConfig(servers=["http://x:1"])
    with pytest.raises(ValueError, match="path: an empty path"):
        SpoolConfig(path="")
    with pytest.raises(msgspec.ValidationError, match=r"port 5 is already listen\.nats's"):
        msgspec.convert({"nats": "a:5", "admin": "a:5"}, ListenConfig)


def test_layers_say_where_each_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("preset: production\nbackpressure: {maxQueueSize: 123}\n")
    loaded = load_layers(path, env={"KPI_SIDECAR_ADMIN_TOKEN": "t"})
    assert loaded.config.backpressure.max_queue_size == 123
    assert loaded.origin("backpressure", "maxQueueSize") == "file"
    assert loaded.origin("backpressure", "maxPublishRate") == "preset"
    assert loaded.origin("backpressure", "maxBatchDelayMs") == "default"
    assert loaded.origin("admin", "token") == "env"
    assert loaded.source is not None and len(loaded.source.sha256) == 64


def test_check_config_prints_every_error_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text('listen: {nats: "127.0.0.1:99999"}\nupstream: {servers: ["http://127.0.0.1:4222"]}\n')
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"kpi-sidecar: error: {path}:1: $.listen.nats: port 99999 is out of range: use 1-65535, or 0 for "
        "any free port",
        f"kpi-sidecar: error: {path}:2: $.upstream.servers[0]: http:// is not a NATS URL: use "
        "nats://HOST:PORT or tls://HOST:PORT",
    ]
