"""This sidecar as a member of its fleet: writes its record to the KV bucket, watches the others', applies
its share of the fleet's rate budget to the engine. The decisions are policies/fleet.py's.

All of it is control traffic on the shared upstream connection: written straight to the upstream (never
offered to the engine: never shed, never counted as application data, not under the rate ceiling), on
subscriptions of the sidecar's own (never routed to applications), like the PubAck inbox. See
docs/fleet.md for the subjects, the bytes per second and the permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from policies.fleet import FleetConfig, FleetMode, FleetState, MemberRecord, key_token
from proxy import __version__
from proxy.fleet import kv
from proxy.nats.protocol import Msg, encode_pub, encode_sub

if TYPE_CHECKING:
    from policies.engine import Engine
    from proxy.upstream.connection import Upstream

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(MemberRecord).decode


class FleetHost(Protocol):
    """What the fleet member needs of the sidecar."""

    engine: Engine
    upstream: Upstream
    server_id: str
    clock: Callable[[], float]

    @property
    def fleet_config(self) -> FleetConfig | None: ...
    @property
    def spooled_messages(self) -> int: ...


def default_member_id() -> str:
    """The pod name (Kubernetes sets HOSTNAME to it) and the process id: unique on one host too."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return key_token(f"{host}-{os.getpid()}")


class FleetMember:
    """Membership in `fleet.bucket` under `fleet.name`: the I/O around a FleetState."""

    def __init__(self, host: FleetHost, config: FleetConfig, sids: tuple[int, ...]) -> None:
        self.host = host
        self.config = config
        self.member_id = config.member_id or default_member_id()
        self.hostname = os.environ.get("POD_NAME") or socket.gethostname()
        self.state = FleetState(self.member_id, config, host.clock())
        self.watch_sid, self.inbox_sid, self.snapshot_sid = sids
        # Replies come on <inbox>.<token>; the snapshot consumer pushes to <inbox> itself, on a
        # subscription of its own: nats-server 2.9 does not push to a consumer's deliver subject that is
        # only covered by a wildcard subscription.
        self.inbox = f"_KPI_FLEET.{host.server_id}"
        self.prefix = f"$KV.{config.bucket}.{config.name}."
        self.bucket_ready = False
        self.mode = FleetMode.JOINING if config.max_publish_rate is not None else FleetMode.OFF
        # Requests in flight: reply token -> (what, deadline); one put and one API request at a time.
        self._pending: dict[str, tuple[str, float]] = {}
        self._tokens = itertools.count(1)
        # While the snapshot of the bucket is being read (until this time): no put yet, so that the first
        # share is computed with every member already in the bucket, not with this one alone.
        self._snapshot_until: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_forwarded = (host.clock(), host.engine.forwarded)
        self.puts = {"ok": 0, "failed": 0}
        self.bytes = {"out": 0, "in": 0}
        self.bucket_created = False
        self.last_put_at: float | None = None

    # -- wiring with the sidecar ----------------------------------------------------------------------
    @property
    def sids(self) -> tuple[int, int, int]:
        """The member's own subscription ids: the bucket watch, the reply inbox, the snapshot."""
        return (self.watch_sid, self.inbox_sid, self.snapshot_sid)

    def subscribe_frames(self) -> bytes:
        """The member's subscriptions, sent with the sidecar's on every (re)connect."""
        return (
            encode_sub(self.prefix + ">", None, self.watch_sid)
            + encode_sub(self.inbox + ".>", None, self.inbox_sid)
            + encode_sub(self.inbox, None, self.snapshot_sid)
        )

    def start(self) -> None:
        now = self.host.clock()
        self.state.update_own(self.own_record(now), now)  # listed at once, before the first write
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fleet")

    async def stop(self) -> None:
        """Leave the fleet: delete the key so that the others' shares grow at once, stop the timer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.host.upstream.connected and self.bucket_ready:
            frame = encode_pub(self.prefix + self.member_id, None, b"", kv.DELETE_HEADERS)
            self._write(frame)
            self.host.upstream.flush()

    def on_connected(self) -> None:
        self.bucket_ready = False
        self._pending.clear()
        self._snapshot_until = None
        self._request("info", kv.stream_info_subject(self.config.bucket), b"")

    def on_lost(self) -> None:
        self.bucket_ready = False
        self._pending.clear()
        self.state.kv_failed(self.host.clock(), "the upstream connection is down")
        self._apply(self.host.clock())

    # -- the periodic write -----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            config = self.host.fleet_config or self.config
            await asyncio.sleep(config.interval_s)
            try:
                self.step(self.host.clock())
            except Exception:  # one bad step must not end membership
                log.exception("fleet: step failed")

    def step(self, now: float) -> None:
        """Once per intervalS: expire, time out, write our record (or find the bucket), apply the share."""
        config = self.host.fleet_config
        if config is not None and config != self.config:
            self.config = config
            self.state.configure(config)
        for member_id in self.state.expire(now):
            log.info(
                "fleet %s: member %s stopped reporting (ttl %gs)",
                self.config.name,
                member_id,
                self.config.ttl_s,
            )
        for token, (what, deadline) in list(self._pending.items()):
            if now >= deadline:
                del self._pending[token]
                self.state.kv_failed(now, f"no answer from JetStream to the {what} in time")
                if what == "put":
                    self.puts["failed"] += 1
                    # The stream may be gone while our own watch keeps the subject answered (no 503):
                    # look the bucket up again (and create it) before the next put.
                    self.bucket_ready = False
        self.state.update_own(self.own_record(now), now)
        upstream = self.host.upstream
        if not upstream.connected:
            self.state.kv_failed(now, "the upstream connection is down")
        elif not self.bucket_ready:
            if not any(what in ("info", "create") for what, _ in self._pending.values()):
                self._request("info", kv.stream_info_subject(self.config.bucket), b"")
        elif self._snapshot_until is None or now >= self._snapshot_until:
            self._snapshot_until = None
            self._put(now)
        self._apply(now)

    def own_record(self, now: float) -> MemberRecord:
        engine = self.host.engine
        snap = engine.snapshot(now)
        then, forwarded_then = self._last_forwarded
        forwarded = engine.forwarded
        rate = (forwarded - forwarded_then) / (now - then) if now > then else 0.0
        self._last_forwarded = (now, forwarded)
        decision = self.state.decide(now)
        return MemberRecord(
            id=self.member_id,
            host=self.hostname,
            level=snap.level,
            level_value=snap.level_value,
            load_percent=round(snap.load_percent, 1),
            dominant_signal=snap.dominant_signal,
            offered_rate=round(snap.publish_rate, 1),
            forwarded_rate=round(rate, 1),
            queue=snap.queue_size,
            spool=self.host.spooled_messages,
            version=__version__,
            time=round(time.time(), 3),
            share=None if decision.ceiling is None else round(decision.ceiling, 1),
            mode=decision.mode.value,
        )

    def _put(self, now: float) -> None:
        if any(what == "put" for what, _ in self._pending.values()):
            return  # the previous put has not been answered: its timeout says so
        own = self.state.members.get(self.member_id)
        if own is None or own.last_seen < now:
            own_record = self.own_record(now)
            self.state.update_own(own_record, now)
        else:
            own_record = own.record  # computed by this step already
        token = f"put.{next(self._tokens)}"
        self._pending[token] = ("put", now + self._answer_wait())
        self._write(encode_pub(self.prefix + self.member_id, f"{self.inbox}.{token}", _encode(own_record)))
        self.last_put_at = now

    def _answer_wait(self) -> float:
        return max(1.0, self.config.interval_s)

    def _request(self, what: str, subject: str, body: bytes) -> None:
        token = f"api.{next(self._tokens)}"
        self._pending[token] = (what, self.host.clock() + self._answer_wait())
        self._write(encode_pub(subject, f"{self.inbox}.{token}", body))

    def _write(self, frame: bytes) -> None:
        upstream = self.host.upstream
        if upstream.connected:
            upstream.write(frame)
            self.bytes["out"] += len(frame)

    def _apply(self, now: float) -> None:
        """The share as the engine's ceiling; one log line when its origin changes."""
        decision = self.state.decide(now)
        self.host.engine.set_rate_ceiling(decision.ceiling, now)
        if decision.mode is not self.mode:
            previous, self.mode = self.mode, decision.mode
            ceiling = self.host.engine.rate_ceiling
            if decision.mode is FleetMode.SHARED:
                log.info(
                    "fleet %s: %d live members, share %.1f msg/s of %g (was %s)",
                    self.config.name,
                    len(decision.shares),
                    ceiling,
                    self.config.max_publish_rate or 0,
                    previous.value,
                )
            elif decision.mode is FleetMode.HOLD:
                log.warning(
                    "fleet %s: KV unavailable (%s): keeping the last share %.1f msg/s for %gs",
                    self.config.name,
                    self.state.kv_error,
                    ceiling,
                    self.config.hold_s,
                )
            elif decision.mode is FleetMode.LOCAL:
                log.warning(
                    "fleet %s: KV unavailable (%s) for longer than holdS: local maxPublishRate %g msg/s",
                    self.config.name,
                    self.state.kv_error,
                    ceiling,
                )

    # -- what comes back ----------------------------------------------------------------------------------
    def on_msg(self, msg: Msg) -> None:
        self.bytes["in"] += len(msg.subject) + len(msg.body)
        now = self.host.clock()
        if msg.sid == self.watch_sid:
            self._on_record(msg, now, 0.0)
            return
        if msg.sid == self.snapshot_sid:
            # Pushed by the snapshot consumer: the MSG carries the record's own subject.
            self._on_snapshot_record(msg, now)
            return
        token = msg.subject[len(self.inbox) + 1 :].decode("ascii", "replace")
        pending = self._pending.pop(token, None)
        if pending is None:
            return  # answered after its timeout
        what = pending[0]
        data, error = kv.api_reply(msg)
        if what == "put":
            self._on_put_ack(now, error)
        elif what == "info":
            if error is None:
                self._bucket_found(now)
            elif kv.error_code(data) == kv.STREAM_NOT_FOUND:
                self._request(
                    "create",
                    kv.stream_create_subject(self.config.bucket),
                    kv.bucket_config(self.config.bucket, self.config.ttl_s),
                )
            else:
                self._kv_error(now, f"bucket {self.config.bucket}: {error}")
        elif what == "create":
            if error is None:
                self.bucket_created = True
                log.info(
                    "fleet: created the KV bucket %s (ttl %gs, history 1, memory)",
                    self.config.bucket,
                    self.config.ttl_s,
                )
                self._bucket_found(now)
            else:
                self._kv_error(now, f"cannot create the KV bucket {self.config.bucket}: {error}")
        elif what == "snapshot":
            if error is not None:
                log.warning("fleet %s: cannot read the bucket's current records: %s", self.config.name, error)
                self._snapshot_done(now)
            elif data is not None and not data.get("num_pending"):
                self._delete_consumer(str(data.get("name") or ""))  # an empty bucket: nothing will come
                self._snapshot_done(now)

    def _kv_error(self, now: float, error: str) -> None:
        if error != self.state.kv_error:
            log.warning("fleet %s: %s", self.config.name, error)
        self.state.kv_failed(now, error)
        self._apply(now)

    def _bucket_found(self, now: float) -> None:
        self.bucket_ready = True
        body = kv.snapshot_consumer(self.config.bucket, self.prefix + ">", self.inbox)
        self._request("snapshot", kv.consumer_create_subject(self.config.bucket), body)
        self._snapshot_until = now + self._answer_wait()

    def _snapshot_done(self, now: float) -> None:
        if self._snapshot_until is not None:
            self._snapshot_until = None
            if self.bucket_ready:
                self._put(now)

    def _on_put_ack(self, now: float, error: str | None) -> None:
        if error is None:
            self.puts["ok"] += 1
            was = self.state.kv_available
            self.state.kv_ok(now)
            if not was:
                self._apply(now)
            return
        self.puts["failed"] += 1
        if "not enabled" in error or "no responders" in error:
            self.bucket_ready = False  # JetStream went away: find (or create) the bucket again later
        self._kv_error(now, f"put refused: {error}")

    def _on_record(self, msg: Msg, now: float, age: float) -> None:
        subject = msg.subject.decode("utf-8", "replace")
        if not subject.startswith(self.prefix):
            return
        member_id = subject[len(self.prefix) :]
        if member_id == self.member_id:
            return  # our own put: we know our state
        if kv.is_delete(msg):
            self.state.forget(member_id)
            log.info("fleet %s: member %s left", self.config.name, member_id)
            self._apply(now)
            return
        try:
            record = _decode_record(msg.payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.state.ignored["invalid"] += 1
            return
        if record.id != member_id:
            self.state.ignored["invalid"] += 1
            return
        known = member_id in self.state.members
        if self.state.observe(record, now, age) and not known:
            log.info("fleet %s: member %s joined", self.config.name, member_id)
            self._apply(now)

    def _on_snapshot_record(self, msg: Msg, now: float) -> None:
        if kv.status_of(msg) is not None:
            return  # heartbeat or flow control: none are asked for
        delivery = kv.delivery_of(msg.reply, time.time())
        self._on_record(msg, now, delivery.age if delivery is not None else 0.0)
        if delivery is not None and delivery.pending == 0:
            self._delete_consumer(delivery.consumer)  # the last key: the snapshot is complete
            self._snapshot_done(now)

    def _delete_consumer(self, consumer: str) -> None:
        if consumer:
            self._write(encode_pub(kv.consumer_delete_subject(self.config.bucket, consumer), None, b""))

    def view_state(self) -> dict[str, Any]:
        """Counters for the fleet view and the metrics."""
        return {"puts": dict(self.puts), "bytes": dict(self.bytes), "ignored": dict(self.state.ignored)}
