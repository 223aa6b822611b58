"""The KV wire helpers (proxy/fleet/kv.py) and the `kpi-sidecar fleet` table: bytes in, values out."""

from __future__ import annotations

import json

import pytest

from proxy.cli.fleet import format_fleet
from proxy.fleet import kv
from proxy.nats.protocol import Msg

STATUS_503 = b"NATS/1.0 503\r\n\r\n"


def msg(body: bytes, hdr_size: int = -1, reply: bytes | None = None, subject: bytes = b"x") -> Msg:
    return Msg(subject=subject, sid=1, reply=reply, hdr_size=hdr_size, body=body)


def test_no_responders_means_jetstream_is_off() -> None:
    data, error = kv.api_reply(msg(STATUS_503, len(STATUS_503)))
    assert data is None and error is not None and "JetStream is not enabled" in error


def test_api_errors_carry_description_and_code() -> None:
    body = b'{"error":{"code":404,"err_code":10059,"description":"stream not found"}}'
    data, error = kv.api_reply(msg(body))
    assert error == "stream not found (code 10059)"
    assert kv.error_code(data) == kv.STREAM_NOT_FOUND


@pytest.mark.parametrize("body", [b"not json", b"[1]"])
def test_answers_that_are_not_json_objects_are_errors(body: bytes) -> None:
    assert kv.api_reply(msg(body))[1]


def test_a_pub_ack_is_success() -> None:
    assert kv.api_reply(msg(b'{"stream":"KV_b","seq":7}')) == ({"stream": "KV_b", "seq": 7}, None)


def test_delete_markers() -> None:
    headers = b"NATS/1.0\r\nKV-Operation: DEL\r\n\r\n"
    assert kv.is_delete(msg(headers, len(headers)))
    assert not kv.is_delete(msg(b"{}"))


@pytest.mark.parametrize(
    "reply",
    [
        b"$JS.ACK.KV_b.cons1.1.217.1.1796182547365289080.2",
        b"$JS.ACK.dom.ACCHASH.KV_b.cons1.1.217.1.1796182547365289080.2.rand",
    ],
)
def test_a_consumer_delivery_gives_its_consumer_age_and_pending(reply: bytes) -> None:
    delivery = kv.delivery_of(reply, 1796182547.365289080 + 4.0)
    assert delivery is not None
    assert delivery.consumer == "cons1" and delivery.pending == 2
    assert delivery.age == pytest.approx(4.0, abs=1e-3)


@pytest.mark.parametrize("reply", [None, b"_INBOX.x", b"$JS.ACK.a.b.c", b"$JS.ACK.s.c.1.2.3.notanumber.0"])
def test_other_replies_are_not_deliveries(reply: bytes | None) -> None:
    assert kv.delivery_of(reply, 0.0) is None


def test_the_bucket_is_a_kv_stream_with_history_one_and_the_ttl_as_max_age() -> None:
    config = json.loads(kv.bucket_config("fleet", 6.0))
    assert config["name"] == "KV_fleet" and config["subjects"] == ["$KV.fleet.>"]
    assert config["max_msgs_per_subject"] == 1 and config["max_age"] == 6_000_000_000
    assert config["allow_rollup_hdrs"] and config["deny_delete"]


def test_the_fleet_table() -> None:
    data = {
        "enabled": True,
        "name": "svc",
        "bucket": "b",
        "memberId": "a",
        "mode": "hold",
        "kvAvailable": False,
        "kvError": "no responders",
        "budget": 600.0,
        "shareMode": "equal",
        "rateCeiling": 300.0,
        "holdRemainingSeconds": 12.0,
        "levels": {"max": 3, "median": 1},
        "members": [
            {
                "id": "a",
                "own": True,
                "host": "pod-a",
                "level": "high",
                "loadPercent": 160.0,
                "offeredRate": 480.0,
                "forwardedRate": 300.0,
                "share": None,
                "queue": 12,
                "spool": 0,
                "lastSeenSecondsAgo": 0.0,
            },
        ],
    }
    text = format_fleet("http://x", data)
    assert "1 live members, mode hold, budget 600 msg/s (equal), ceiling here 300.0 msg/s" in text
    assert "KV unavailable: no responders (last share held 12 s more)" in text
    assert "a *" in text and "pod-a" in text and "480.0" in text
    assert "no fleet configured" in format_fleet("http://x", {"enabled": False})
