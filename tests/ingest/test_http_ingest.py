"""HTTP ingest against a running sidecar and a real subscriber on the upstream nats-server."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
from collections.abc import Callable
from typing import Any

import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.schema import build_config
from proxy.ports.http_ingest import create_ingest_app, forwarded_headers, header_block
from proxy.sidecar import Sidecar
from tests.admin.api import Answer, call, wait_for
from tests.conftest import settle


@pytest.fixture(scope="module")
def plain(stack_factory: Any) -> Any:
    return stack_factory()


@pytest.fixture(scope="module")
def small(stack_factory: Any) -> Any:
    """Upstream max_payload 4096, body limit 8192 bytes, at most 5 messages per batch."""
    return stack_factory({"http": {"maxBodyBytes": 8192, "maxBatchItems": 5}}, nats_conf="max_payload: 4096")


def raw_post(base: str, path: str, body: bytes, headers: list[tuple[str, str]]) -> Answer:
    """POST with repeated headers allowed (urllib merges them)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", path, skip_accept_encoding=True)
    for name, value in [*headers, ("Content-Length", str(len(body)))]:
        conn.putheader(name, value)
    conn.endheaders(body)
    response = conn.getresponse()
    answer = Answer(response.status, dict(response.getheaders()), response.read())
    conn.close()
    return answer


def receive(
    stack: Any, subject: str, count: int, action: Callable[[], Any], timeout: float = 5
) -> tuple[Any, list]:
    """Subscribe on the upstream, run `action` (sync HTTP calls), collect `count` messages."""

    async def run() -> tuple[Any, list]:
        nc = await nats.connect(stack.nats.url)
        sub = await nc.subscribe(subject)
        await settle(nc)
        result = await asyncio.to_thread(action)
        msgs = [await sub.next_msg(timeout=timeout) for _ in range(count)]
        await nc.close()
        return result, msgs

    return asyncio.run(run())


def test_a_post_is_delivered_with_its_payload_and_message_headers(plain: Any) -> None:
    payload = bytes(range(256)) * 4
    headers = [
        ("KPI-Priority", "high"),
        ("X-Trace-Id", "trace-42"),
        ("Nats-Msg-Id", "order-1"),
        ("Content-Type", "application/octet-stream"),
        ("User-Agent", "curl/8"),
        ("Accept", "*/*"),
        ("Authorization", "Bearer app-secret"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "hop-by-hop"),
        ("X-Forwarded-For", "10.0.0.1"),
    ]
    answer, msgs = receive(
        plain,
        "kpi.http.>",
        1,
        lambda: raw_post(plain.sidecar.http_url, "/publish/kpi.http.one", payload, headers),
    )
    assert answer.status == 202, answer
    assert answer.data == {
        "subject": "kpi.http.one",
        "priority": "high",
        "size": answer.data["size"],
        "reason": None,
        "result": "forwarded",
    }
    msg = msgs[0]
    assert msg.subject == "kpi.http.one" and msg.data == payload
    assert msg.headers == {"KPI-Priority": "high", "X-Trace-Id": "trace-42", "Nats-Msg-Id": "order-1"}


def test_reply_subject_and_a_subject_with_a_slash(plain: Any) -> None:
    def post() -> Answer:
        return call(plain.sidecar.http_url, "POST", "/publish/kpi.http.a/b?reply=kpi.inbox.7", raw=b"q")

    answer, msgs = receive(plain, "kpi.http.>", 1, post)
    assert answer.status == 202
    assert msgs[0].subject == "kpi.http.a/b" and msgs[0].reply == "kpi.inbox.7"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/publish/kpi.*", "subject"),
        ("/publish/kpi.>", "subject"),
        ("/publish/kpi..x", "subject"),
        ("/publish/kpi.%0D%0AUNSUB", "subject"),
        ("/publish/kpi%20x", "subject"),
        ("/publish/" + "a" * 1100, "subject"),
        ("/publish/kpi.x?reply=in.*", "reply"),
        ("/publish/kpi.x?reply=", "reply"),
    ],
)
def test_an_invalid_subject_or_reply_is_400(plain: Any, path: str, field: str) -> None:
    answer = call(plain.sidecar.http_url, "POST", path, raw=b"x")
    assert answer.status == 400, answer
    assert answer.error["code"] == "INVALID_SUBJECT" and answer.error["details"]["field"] == field


def test_above_max_payload_is_413(small: Any) -> None:
    wait_for(
        lambda: (
            call(small.admin, "GET", "/api/backpressure/health/detailed").data["components"]["upstream"][
                "maxPayload"
            ]
            == 4096
        )
    )
    ingest = small.sidecar.http_url
    assert call(ingest, "POST", "/publish/kpi.big", raw=b"x" * 4096).status == 202
    over = call(ingest, "POST", "/publish/kpi.big", raw=b"x" * 4097)
    assert over.status == 413 and over.error["code"] == "MAX_PAYLOAD_EXCEEDED"
    # Headers count too, as nats-server counts them.
    with_headers = call(ingest, "POST", "/publish/kpi.big", raw=b"x" * 4000, headers={"X-Pad": "p" * 200})
    assert with_headers.status == 413
    body_limit = call(ingest, "POST", "/publish/kpi.big", raw=b"x" * 9000)
    assert body_limit.status == 413 and body_limit.error["code"] == "PAYLOAD_TOO_LARGE"
    batch = call(
        ingest, "POST", "/publish", [{"subject": "kpi.big", "data": "x" * 5000}, {"subject": "kpi.ok"}]
    )
    assert batch.status == 202
    assert [r["status"] for r in batch.data["results"]] == [413, 202]


def test_a_batch_gives_one_result_per_item_and_delivers_in_order(plain: Any) -> None:
    items = [
        {"subject": "kpi.batch.a", "data": "one"},
        {
            "subject": "kpi.batch.b",
            "dataBase64": base64.b64encode(b"\x00\xfftwo").decode(),
            "priority": "high",
        },
        {"subject": "kpi.batch.*", "data": "bad subject"},
        {"subject": "kpi.batch.c", "data": "x", "color": "red"},
        {"subject": "kpi.batch.c", "data": "x", "dataBase64": "eA=="},
        {"subject": "kpi.batch.c", "dataBase64": "***"},
        {"subject": "kpi.batch.c", "data": "three", "headers": {"X-Tag": ["t1", "t2"], "X-One": "1"}},
        {"subject": "kpi.batch.d", "data": "four", "reply": "kpi.inbox.b"},
    ]
    answer, msgs = receive(
        plain, "kpi.batch.>", 4, lambda: call(plain.sidecar.http_url, "POST", "/publish", items)
    )
    assert answer.status == 202
    results = answer.data["results"]
    assert [r["index"] for r in results] == list(range(8))
    assert [r["status"] for r in results] == [202, 202, 400, 400, 400, 400, 202, 202]
    assert [r["result"] for r in results] == ["forwarded"] * 2 + ["invalid"] * 4 + ["forwarded"] * 2
    assert results[2]["code"] == "INVALID_SUBJECT" and results[5]["field"] == "dataBase64"
    assert answer.data["summary"] == {"forwarded": 4, "invalid": 4}
    assert [(m.subject, m.data) for m in msgs] == [
        ("kpi.batch.a", b"one"),
        ("kpi.batch.b", b"\x00\xfftwo"),
        ("kpi.batch.c", b"three"),
        ("kpi.batch.d", b"four"),
    ]
    assert msgs[1].headers == {"KPI-Priority": "high"}
    assert msgs[2].headers["X-One"] == "1" and msgs[2].headers["X-Tag"] in ("t1", "t2")
    assert msgs[3].reply == "kpi.inbox.b"


def test_ndjson_batches_and_their_limits(plain: Any, small: Any) -> None:
    lines = [
        json.dumps({"subject": "kpi.nd.a", "data": "1"}),
        "",
        "{not json",
        json.dumps({"subject": "kpi.nd.b", "data": "2"}),
        '"just a string"',
    ]
    raw = "\n".join(lines).encode()
    answer, msgs = receive(
        plain,
        "kpi.nd.>",
        2,
        lambda: call(
            plain.sidecar.http_url,
            "POST",
            "/publish",
            raw=raw,
            headers={"Content-Type": "application/x-ndjson"},
        ),
    )
    assert answer.status == 202
    assert [(r["index"], r["status"]) for r in answer.data["results"]] == [
        (0, 202),
        (1, 400),
        (2, 202),
        (3, 400),
    ]
    assert [m.data for m in msgs] == [b"1", b"2"]
    six = [{"subject": f"kpi.nd.{i}"} for i in range(6)]
    too_many = call(small.sidecar.http_url, "POST", "/publish", six)
    assert too_many.status == 413 and too_many.error["code"] == "TOO_MANY_ITEMS"
    ndjson = "\n".join(json.dumps(item) for item in six).encode()
    assert call(small.sidecar.http_url, "POST", "/publish", raw=ndjson).status == 413
    for bad in (b"", b"   ", b"[1, 2", b"[{}]"):
        answer = call(plain.sidecar.http_url, "POST", "/publish", raw=bad)
        assert answer.status in (400, 202), (bad, answer)
        if answer.status == 202:
            assert answer.data["results"][0]["status"] == 400


def test_batch_limits_hold_exactly_at_the_limit(small: Any) -> None:
    ingest = small.sidecar.http_url
    five = [{"subject": f"kpi.edge.{i}"} for i in range(5)]
    as_json = call(ingest, "POST", "/publish", five)
    assert as_json.status == 202 and as_json.data["count"] == 5
    ndjson = "\n".join(json.dumps(item) for item in five).encode()
    as_ndjson = call(ingest, "POST", "/publish", raw=ndjson)
    assert as_ndjson.status == 202 and as_ndjson.data["count"] == 5
    # http.maxBodyBytes is 8192: a body of exactly that size is taken, one byte more is not.
    item = json.dumps([{"subject": "kpi.edge.size"}]).encode()
    at_limit = call(ingest, "POST", "/publish", raw=item.ljust(8192))
    assert at_limit.status == 202 and at_limit.data["count"] == 1
    over = call(ingest, "POST", "/publish", raw=item.ljust(8193))
    assert over.status == 413 and over.error["code"] == "PAYLOAD_TOO_LARGE"


def test_priorities_are_honored_under_load(stack_factory: Any) -> None:
    stack = stack_factory(
        {
            "backpressure": {"breakerCriticalTopSubjects": 0, "recoveryDelayMs": 30000},
            "policies": [{"subject": "kpi.quiet.>", "priority": "low", "onRefuse": "drop"}],
        }
    )
    ingest = stack.sidecar.http_url
    # A memory threshold below the process's RSS puts the sidecar at critical at the next tick.
    assert call(stack.admin, "PUT", "/api/backpressure/config", {"maxMemoryUsageMB": 1}).status == 200
    wait_for(
        lambda: call(stack.admin, "GET", "/api/backpressure/status").data["degradationLevel"] == "critical"
    )

    low = call(ingest, "POST", "/publish/kpi.prio.low", raw=b"l", headers={"KPI-Priority": "low"})
    assert low.status == 429, low
    assert low.error["code"] == "REFUSED"
    assert low.error["details"]["result"] == "dropped" and low.error["details"]["reason"] == "low_priority"
    assert int(low.headers["Retry-After"]) >= 1
    quiet = call(ingest, "POST", "/publish/kpi.quiet.x", raw=b"q")
    assert (
        quiet.status == 202 and quiet.data["result"] == "dropped" and quiet.data["reason"] == "low_priority"
    )
    mediums = [call(ingest, "POST", "/publish/kpi.prio.medium", raw=b"m") for _ in range(30)]
    assert {a.status for a in mediums} <= {202, 429}
    sampled = [a for a in mediums if a.status == 429]
    assert sampled and all(a.error["details"]["result"] == "sampled_out" for a in sampled)

    def post_critical() -> Answer:
        return call(
            ingest, "POST", "/publish/kpi.prio.critical", raw=b"c", headers={"KPI-Priority": "critical"}
        )

    answer, msgs = receive(stack, "kpi.prio.critical", 1, post_critical)
    assert answer.status == 202 and answer.data["result"] in ("queued", "forwarded")
    assert answer.data["priority"] == "critical"
    assert msgs[0].data == b"c" and msgs[0].headers["KPI-Priority"] == "critical"
    assert msgs[0].headers.get("Nats-Msg-Id")  # added by the sidecar to critical messages
    batch = call(
        ingest,
        "POST",
        "/publish",
        [
            {"subject": "kpi.prio.low", "priority": "low"},
            {"subject": "kpi.prio.critical", "priority": "critical"},
        ],
    )
    assert batch.status == 202 and batch.headers.get("Retry-After")
    assert [r["status"] for r in batch.data["results"]] == [429, 202]


def test_which_request_headers_become_nats_headers() -> None:
    raw = [
        (b"Host", b"x"),
        (b"X-Multi", b"1"),
        (b"Content-Type", b"text/plain"),
        (b"X-Multi", b"2"),
        (b"Connection", b"close, X-Secret-Hop"),
        (b"X-Secret-Hop", b"h"),
        (b"Accept-Language", b"fr"),
        (b"Sec-Fetch-Mode", b"cors"),
        (b"Nats-Expected-Stream", b"ORDERS"),
        (b"kpi-priority", b"critical"),
        (b"nats-msg-id", b"m-1"),
        (b"nats-expected-last-sequence", b"7"),
        (b"x-lower-case", b"kept as sent"),
    ]
    pairs = forwarded_headers(raw)
    assert pairs == [
        ("X-Multi", "1"),
        ("X-Multi", "2"),
        ("Nats-Expected-Stream", "ORDERS"),
        ("KPI-Priority", "critical"),
        ("Nats-Msg-Id", "m-1"),
        ("Nats-Expected-Last-Sequence", "7"),
        ("x-lower-case", "kept as sent"),
    ]
    block = header_block(pairs[:4])
    assert block == (
        b"NATS/1.0\r\nX-Multi: 1\r\nX-Multi: 2\r\n"
        b"Nats-Expected-Stream: ORDERS\r\nKPI-Priority: critical\r\n\r\n"
    )
    # A batch item's `priority` replaces any KPI-Priority header.
    assert header_block(pairs[:4], "low").endswith(
        b"Nats-Expected-Stream: ORDERS\r\nKPI-Priority: low\r\n\r\n"
    )
    assert header_block([]) is None


async def test_shutting_down_ingest_answers_503() -> None:
    sidecar = Sidecar(build_config({"spool": {"path": None}}, env={}))
    sidecar.shutting_down = True
    client = TestClient(TestServer(create_ingest_app(sidecar)))
    await client.start_server()
    try:
        response = await client.post("/publish/a.b", data=b"x")
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "SHUTTING_DOWN"
        assert (await client.post("/publish", data=b'[{"subject": "a"}]')).status == 503
    finally:
        await client.close()


def test_a_plain_batch_gets_the_answers_and_messages_of_the_per_item_path(plain: Any) -> None:
    # A plain batch is decided in one engine call and written in one slice (proxy/ports/ingest_batch.py);
    # the same items followed by one with a reply subject take the per-item path: same answers, same bytes.
    items = [
        {"subject": f"kpi.fast.{i % 3}", "data": f"m{i}", **({"priority": "high"} if i % 4 == 0 else {})}
        for i in range(300)
    ]
    tail = {"subject": "kpi.fast.0", "data": "r", "reply": "kpi.inbox.fast"}
    ndjson = "\n".join(json.dumps(item) for item in items).encode()

    def post(body: bytes) -> Answer:
        return call(
            plain.sidecar.http_url, "POST", "/publish", raw=body, headers={"Content-Type": "x-ndjson"}
        )

    fast, fast_msgs = receive(plain, "kpi.fast.>", 300, lambda: post(ndjson))
    slow, slow_msgs = receive(
        plain, "kpi.fast.>", 301, lambda: post(ndjson + b"\n" + json.dumps(tail).encode())
    )
    assert fast.status == slow.status == 202
    assert fast.data["results"] == slow.data["results"][:300]
    assert fast.data["summary"] == {"forwarded": 300}
    assert [(m.subject, m.data, m.headers) for m in fast_msgs] == [
        (m.subject, m.data, m.headers) for m in slow_msgs[:300]
    ]
    assert fast_msgs[0].headers == {"KPI-Priority": "high"} and fast_msgs[1].headers is None


def old_subject_check(value: str) -> bool:
    """check_subject before the regular expression: the reference it must agree with."""
    from proxy.nats.protocol import is_valid_publish_subject

    return (
        is_valid_publish_subject(value)
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
        and len(value.encode("utf-8", "surrogateescape")) <= 1024
    )


@given(st.text(alphabet=st.sampled_from(list("ab.*> \t\x00\x1f\x7f\x85é\u00a0>*")), max_size=12))
def test_the_subject_check_is_the_one_it_replaces(value: str) -> None:
    from proxy.ports.ingest_batch import subject_ok

    assert subject_ok(value) is old_subject_check(value)
    for long in ("a" * 1024, "é" * 512, "é" * 513, "a" * 1025, "a." * 512):
        assert subject_ok(long) is old_subject_check(long)


def test_an_object_cut_over_two_lines_is_two_bad_lines(plain: Any) -> None:
    # The batch is decoded at once only when each line holds one whole object (proxy/ports/ingest_batch.py).
    raw = b'{"subject": "kpi.cut.a",\n"data": "x"}\n{"subject": "kpi.cut.b"}'
    answer = call(plain.sidecar.http_url, "POST", "/publish", raw=raw, headers={"Content-Type": "x-ndjson"})
    assert answer.status == 202
    assert [(r["index"], r["status"]) for r in answer.data["results"]] == [(0, 400), (1, 400), (2, 202)]


def test_the_subject_cache_stays_within_its_bound_and_keeps_answering() -> None:
    from proxy.ports import ingest_batch

    for i in range(ingest_batch.SUBJECT_CACHE_SIZE + 10):
        assert ingest_batch.subject_ok(f"cache.bound.{i}")
        assert not ingest_batch.subject_ok(f"cache.bound.{i}.*")
        assert len(ingest_batch._valid_subjects) <= ingest_batch.SUBJECT_CACHE_SIZE
    assert ingest_batch.subject_ok("cache.bound.0") and not ingest_batch.subject_ok("cache.bound.0.>")
