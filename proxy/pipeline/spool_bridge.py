"""The spool bridge: critical messages to disk while the upstream is away, and back once it returns.

One job: decide when critical messages go to the `Spool` (spool mode: the upstream down past
`spool.upstreamDownThresholdMs`, or rows already on disk, so that order is kept) and replay the rows
oldest first, deleting them once a PONG confirms them. Collaborators: the `Spool` (SQLite rows), the
`Engine` (hand over queued critical messages, rate tokens, counts), the `Upstream` (writes and the PING
barrier); the sidecar wires `max_payload`, `schedule_pump` and `shutting_down` from the publish path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from policies.config import Priority
from policies.engine import Engine
from proxy.config.schema import SidecarConfig
from proxy.nats.protocol import split_pub
from proxy.pipeline.message import OutMsg
from proxy.pipeline.spool import Spool
from proxy.upstream.connection import Upstream

log = logging.getLogger(__name__)

CRITICAL = Priority.CRITICAL
# Rows read from disk per replay step.
REPLAY_BATCH = 500


class SpoolBridge:
    """Spool mode, the replay loop, and spooling of queued critical messages."""

    def __init__(
        self,
        config: SidecarConfig,
        engine: Engine,
        upstream: Upstream,
        spool: Spool | None,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.engine = engine
        self.upstream = upstream
        self.spool = spool
        self.loop = loop
        self.clock = clock
        # Wired by the sidecar.
        self.max_payload: Callable[[], int] = lambda: 0
        self.schedule_pump: Callable[[], None] = lambda: None
        self.shutting_down: Callable[[], bool] = lambda: False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.replayed = 0

    async def start(self) -> None:
        """Open the spool and start the replay loop (nothing without a spool path)."""
        if self.spool is not None:
            await self.spool.open()
            self._task = self.loop.create_task(self._replay_loop(), name="spool-replay")

    def stop_replay(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        if self.spool is not None:
            await self.spool.close()

    def wake(self) -> None:
        """Let the replay loop look again (rows added, or the upstream is back)."""
        self._wakeup.set()

    def spool_one(self, msg: OutMsg) -> bool:
        """Write one message to disk; False without a spool or room in it."""
        spool = self.spool
        if spool is None or not spool.has_room(len(msg.frame)):
            return False
        spool.append(msg.subject, msg.frame)
        return True

    @property
    def spool_mode(self) -> bool:
        """Critical messages go to disk: the upstream is down past the threshold, or the spool is not empty
        (so that critical messages keep their order behind what is already spooled)."""
        spool = self.spool
        if spool is None:
            return False
        if spool.messages:
            return True
        down_since = self.upstream.disconnected_at
        threshold = self.config.spool.upstream_down_threshold_ms / 1000
        return down_since is not None and self.clock() - down_since >= threshold

    def spool_queued_critical(self) -> None:
        """Move the engine's queued critical messages to disk (in spool mode)."""
        now = self.clock()
        for msg in self.engine.hand_over_critical():
            if self.spool_one(msg):
                self.engine.note_spooled(msg)
            else:
                self.engine.requeue_handed(msg, now)
        self._wakeup.set()

    def tick(self) -> None:
        """Spool queued critical messages in spool mode; wake the replay while rows wait."""
        if self.spool is None:
            return
        if self.engine.critical_queued() and self.spool_mode:
            self.spool_queued_critical()
        if self.spool.messages:
            self._wakeup.set()

    async def _replay_loop(self) -> None:
        """Replay the spool oldest first while the upstream is up; delete rows once a PONG confirms them."""
        spool = self.spool
        assert spool is not None
        batch_size = REPLAY_BATCH
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while spool.messages and self.upstream.can_send and not self.shutting_down():
                # Critical messages on disk go before queued lower priorities (the pump holds those, see
                # Publisher.pump), at the full rate ceiling: rate tokens first, then the rows.
                granted = self.engine.take_tokens(self.clock(), min(batch_size, spool.messages))
                if not granted:
                    await asyncio.sleep(min(0.05, max(0.001, 1 / self.engine.config.max_publish_rate)))
                    continue
                rows = await spool.read(0, granted)
                if not rows:
                    break
                now = self.clock()
                msgs = []
                for r in rows:
                    size = len(split_pub(r.frame)[3])
                    msgs.append(OutMsg(r.subject, None, CRITICAL, size, r.frame, None, now, None))
                max_payload = self.max_payload()
                sendable = [m for m in msgs if m.size <= max_payload]
                if len(sendable) < len(msgs):
                    log.error(
                        "spool: %d rows above the upstream's max_payload, dropped", len(msgs) - len(sendable)
                    )
                confirmed: asyncio.Future[bool] = self.loop.create_future()
                for msg in sendable:
                    self.upstream.write(msg.frame)
                self.upstream.confirm(lambda ok, fut=confirmed: fut.done() or fut.set_result(ok))
                if not await confirmed:
                    break  # connection lost: the rows stay, replay starts over after the reconnect
                spool.delete([r.id for r in rows], sum(len(r.frame) for r in rows))
                max_payload = self.max_payload()
                for msg in sendable:
                    self.engine.note_unspooled(msg)
                for msg in msgs:
                    if msg.size > max_payload:
                        self.engine.note_spool_dropped(msg, "max_payload")
                self.replayed += len(rows)
            self.schedule_pump()  # the hold on lower priorities ends with the spool
            if spool.messages == 0 and self.replayed:
                log.info("spool drained (%d messages replayed so far)", self.replayed)
