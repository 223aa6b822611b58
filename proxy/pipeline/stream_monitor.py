"""Polls the fill of the JetStream streams that `delivery: jetstream` rules publish into.

For each such rule, `$JS.API.STREAM.NAMES` with the rule's subject as filter finds its streams (again every
LOOKUP_EVERY polls, so a stream created later is found); each stream is then asked `$JS.API.STREAM.INFO`
every `streamPollIntervalMs`. The requests go on the shared upstream connection, written straight to it
(the sidecar's own control traffic: never offered to the engine, so never sampled, shed or queued), and the
answers come back on the PubAck inbox (`_KPI_ACK.<server id>.s<n>`), which exists exactly while such a rule
does. Bounded: one request in flight per rule and per stream, at most MAX_STREAMS streams, a request not
answered within two intervals is forgotten. A stream fed by rules of several priorities counts for the
lowest (whose shedding relieves it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import TYPE_CHECKING, Any

from policies.config import Delivery, Priority
from policies.signals import MAX_STREAMS, StreamReading
from proxy.nats.protocol import encode_pub

if TYPE_CHECKING:
    from proxy.nats.protocol import Msg
    from proxy.sidecar import Sidecar

log = logging.getLogger(__name__)

# Reply tokens of the monitor's requests start with this (PubAck tokens are digits).
TOKEN_PREFIX = "s"
LOOKUP_EVERY = 6
NAMES_API = "$JS.API.STREAM.NAMES"
INFO_API = "$JS.API.STREAM.INFO."


class StreamMonitor:
    """Asks the upstream about the streams of `delivery: jetstream` rules and feeds the engine."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._tokens = itertools.count(1)
        # token -> ("names", rule subject) or ("info", stream name), with the time it was sent.
        self._pending: dict[str, tuple[str, str, float]] = {}
        self._in_flight: set[tuple[str, str]] = set()
        # Streams found per rule subject, and each stream's priority class.
        self._rule_streams: dict[str, set[str]] = {}
        self._polls = 0
        self.requests = 0
        self.answers = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self.poll(self._sidecar.clock())
            await asyncio.sleep(self._sidecar.engine.config.stream_poll_interval_ms / 1000)

    def _rules(self) -> dict[str, Priority]:
        rules: dict[str, Priority] = {}
        for rule in self._sidecar.engine.rules:
            if rule.delivery is Delivery.JETSTREAM and rule.subject not in rules:
                rules[rule.subject] = rule.priority_value
        return rules

    def _stream_priorities(self, rules: dict[str, Priority]) -> dict[str, Priority]:
        priorities: dict[str, Priority] = {}
        for subject, names in self._rule_streams.items():
            priority = rules.get(subject)
            if priority is None:
                continue
            for name in names:
                if name not in priorities or priority < priorities[name]:
                    priorities[name] = priority
        return priorities

    def poll(self, now: float) -> None:
        """One round: look streams up (now and then) and ask each for its state (one request in flight)."""
        sidecar = self._sidecar
        engine = sidecar.engine
        rules = self._rules()
        for subject in [s for s in self._rule_streams if s not in rules]:
            del self._rule_streams[subject]
        known = self._stream_priorities(rules)
        for name in [name for name in engine.stream_names() if name not in known]:
            engine.forget_stream(name)
        self._expire(now)
        if not rules or not sidecar.upstream.connected or sidecar.ack_subscription_denied:
            return
        lookup = self._polls % LOOKUP_EVERY == 0
        self._polls += 1
        for subject in rules:
            if lookup or subject not in self._rule_streams:
                self._request("names", subject, NAMES_API, json.dumps({"subject": subject}).encode(), now)
        for name in known:
            self._request("info", name, INFO_API + name, b"", now)

    def _request(self, kind: str, key: str, api: str, payload: bytes, now: float) -> None:
        if (kind, key) in self._in_flight:
            return
        token = f"{TOKEN_PREFIX}{next(self._tokens)}"
        self._pending[token] = (kind, key, now)
        self._in_flight.add((kind, key))
        self.requests += 1
        upstream = self._sidecar.upstream
        upstream.write(encode_pub(api, self._sidecar.ack_prefix + token, payload))

    def _expire(self, now: float) -> None:
        limit = 2 * self._sidecar.engine.config.stream_poll_interval_ms / 1000
        for token in [t for t, (_, _, at) in self._pending.items() if now - at > limit]:
            kind, key, _ = self._pending.pop(token)
            self._in_flight.discard((kind, key))

    def on_reply(self, token: str, msg: Msg) -> None:
        """An answer on the PubAck inbox with one of our tokens."""
        entry = self._pending.pop(token, None)
        if entry is None:
            return
        kind, key, _ = entry
        self._in_flight.discard((kind, key))
        body = msg.body[msg.hdr_size :] if msg.hdr_size > 0 else msg.body
        try:
            answer: Any = json.loads(body) if body else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict) or "error" in answer or not answer:
            self.errors += 1
            error = answer.get("error") if isinstance(answer, dict) else None
            log.debug("JetStream %s %s answered %s", kind, key, error or "nothing usable")
            if kind == "info":
                self._sidecar.engine.forget_stream(key)
            return
        self.answers += 1
        if kind == "names":
            self._on_names(key, answer)
        else:
            self._on_info(key, answer)

    def _on_names(self, subject: str, answer: dict[str, Any]) -> None:
        names = [n for n in (answer.get("streams") or []) if isinstance(n, str)]
        others = sum(len(v) for s, v in self._rule_streams.items() if s != subject)
        self._rule_streams[subject] = set(names[: max(0, MAX_STREAMS - others)])

    def _on_info(self, name: str, answer: dict[str, Any]) -> None:
        sidecar = self._sidecar
        priority = self._stream_priorities(self._rules()).get(name)
        if priority is None:
            return
        config = answer.get("config") or {}
        state = answer.get("state") or {}
        reading = StreamReading(
            name=name,
            priority=priority,
            subjects=tuple(s for s in (config.get("subjects") or []) if isinstance(s, str))[:16],
            bytes=int(state.get("bytes") or 0),
            max_bytes=int(config.get("max_bytes") or -1),
            msgs=int(state.get("messages") or 0),
            max_msgs=int(config.get("max_msgs") or -1),
            discard=str(config.get("discard") or "old"),
            at=sidecar.clock(),
        )
        sidecar.engine.observe_stream(reading)

    def stats(self) -> dict[str, int]:
        """Requests sent, answers used, errors, and requests in flight."""
        return {
            "requests": self.requests,
            "answers": self.answers,
            "errors": self.errors,
            "inFlight": len(self._pending),
        }
