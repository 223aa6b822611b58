"""Deliveries: application subscriptions, and the upstream messages routed to them.

One job: the routing table from upstream subscription ids (`usid`) to application subscriptions, as
nats-server's `sublist.go` and `client.go` deliver. Subscribe, unsubscribe (with max counts, and the
in-flight messages a retired subscription still gets), the C router's `routes`, reply subjects
remembered per client, echo suppression for `echo=false` clients (one shared upstream connection cannot
ask the server not to echo one application), subscriptions the upstream refused, and the SUBs replayed on
a reconnect. Collaborators: the `Upstream` (SUB/UNSUB, PING barrier), the `Confirmations` (the PubAck
inbox shares the sid space: ACK_SID), the client connections it delivers to.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from policies import roles
from policies.subjects import subject_matches
from proxy.nats.protocol import (
    Msg,
    MsgRun,
    Sub,
    encode_err,
    encode_sub,
    encode_unsub,
    next_msg,
    route_msgs,
    split_pub,
)
from proxy.pipeline.confirmations import ACK_SID, Confirmations
from proxy.pipeline.message import OutMsg
from proxy.ports.nats_port import ClientSub
from proxy.upstream.connection import Upstream

if TYPE_CHECKING:
    from proxy.ports.nats_port import ClientConnection

log = logging.getLogger(__name__)

# Reply subjects under these prefixes have their role by themselves; others are remembered per client.
ROLE_PREFIXES = tuple(prefix.encode() for prefix, _ in roles.ROLE_PREFIXES)
# -ERR 'Permissions Violation for Subscription to "<subject>"[ using queue "<queue>"]' (nats-server).
_SUB_DENIED = re.compile(r'subscription to "(.*?)"(?: using queue "(.*?)")?\s*$', re.IGNORECASE)
# Bound on the echoes one echo=false subscription waits for (its client's own in-flight messages).
MAX_PENDING_ECHOES = 10_000


class Deliveries:
    """The routing table (`subs`, and `routes` for the C router) and delivery of upstream messages."""

    def __init__(self, upstream: Upstream, clock: Callable[[], float], confirmations: Confirmations) -> None:
        self.upstream = upstream
        self.clock = clock
        self.confirmations = confirmations
        self.subs: dict[int, ClientSub] = {}
        # Subscriptions whose plain MSGs the C router writes straight to their application (usid ->
        # (client, client sid)): everything but echo=false clients and subscriptions with a max count.
        self.routes: dict[int, tuple[ClientConnection, bytes]] = {}
        self._usids = itertools.count(1)
        # The sidecar's own subscriptions (e.g. the fleet's KV watch): usid -> handler, never routed to
        # an application. Their SUBs are sent by their owners (see Sidecar.resubscribe_frames).
        self.own: dict[int, Callable[[Msg], None]] = {}

    def reserve(self, count: int) -> tuple[int, ...]:
        """`count` subscription ids for the sidecar's own subscriptions (route them through `own`)."""
        return tuple(next(self._usids) for _ in range(count))

    # -- subscriptions -------------------------------------------------------------------------------
    def subscribe(self, client: ClientConnection, op: Sub) -> None:
        """An application's SUB: a new upstream subscription id, routed at once."""
        if op.sid in client.subs:
            return  # nats-server ignores a SUB that reuses a live sid
        usid = next(self._usids)
        sub = ClientSub(client, op.sid, op.subject, op.queue, usid)
        client.subs[op.sid] = sub
        self.subs[usid] = sub
        self.route(sub)
        self.upstream.subscribe(usid, op.subject, op.queue)

    def route(self, sub: ClientSub) -> None:
        """Let the C router deliver this subscription's plain MSGs, or stop it (see `routes`)."""
        if route_msgs is not None and sub.client.echo and not sub.max_msgs and not sub.client.closed:
            self.routes[sub.usid] = (sub.client, sub.sid_bytes)
        else:
            self.routes.pop(sub.usid, None)

    def unsubscribe(self, client: ClientConnection, sid: str, max_msgs: int | None) -> None:
        """An application's UNSUB: a max count to reach, or retire the subscription now."""
        sub = client.subs.get(sid)
        if sub is None:
            return
        if max_msgs is not None and max_msgs > sub.delivered:
            sub.max_msgs = max_msgs
            self.route(sub)  # counted one by one from now on
            if client.echo:
                # The upstream sub has counted the same deliveries, so the absolute max applies there too.
                # (Not for echo=false: the echoes the sidecar skips count upstream; it unsubscribes itself.)
                self.upstream.unsubscribe(sub.usid, max_msgs)
            return
        del client.subs[sid]
        self.upstream.unsubscribe(sub.usid)
        self._retire(sub)

    def drop_client(self, client: ClientConnection) -> None:
        """A closed client: its subscriptions go, upstream too."""
        for sub in client.subs.values():
            self.routes.pop(sub.usid, None)
            if self.subs.pop(sub.usid, None) is not None:
                self.upstream.unsubscribe(sub.usid)
        client.subs.clear()
        for sub in client.retiring:
            self.routes.pop(sub.usid, None)
            self.subs.pop(sub.usid, None)
        client.retiring.clear()

    def _retire(self, sub: ClientSub) -> None:
        """Keep delivering what the upstream sent before it processed the UNSUB, as nats-server's own
        in-flight messages reach an application after its UNSUB (nats-py's drain() counts on them): the
        route goes once the PONG of a PING written after the UNSUB is back."""
        usid = sub.usid
        if not self.upstream.connected:
            self.subs.pop(usid, None)
            self.routes.pop(usid, None)
            return
        sub.closing = True
        sub.client.retiring.add(sub)
        self.upstream.confirm(lambda _ok: self._forget_retired(sub))

    def _forget_retired(self, sub: ClientSub) -> None:
        sub.client.retiring.discard(sub)
        if self.subs.get(sub.usid) is sub:
            del self.subs[sub.usid]
            self.routes.pop(sub.usid, None)

    def _forget_sub(self, sub: ClientSub) -> None:
        """Drop a subscription everywhere (the upstream refused it, or its max count was reached)."""
        client = sub.client
        if client.subs.get(sub.sid) is sub:
            del client.subs[sub.sid]
        client.retiring.discard(sub)
        if self.subs.get(sub.usid) is sub:
            del self.subs[sub.usid]
        self.routes.pop(sub.usid, None)

    def resubscribe_frames(self) -> bytes:
        """SUBs (with remaining max counts) for every live subscription, sent on each (re)connect."""
        frames = bytearray(self.confirmations.ack_frames())
        for usid, sub in list(self.subs.items()):
            if sub.closing:
                self._forget_retired(sub)  # its UNSUB went with the lost connection: nothing more comes
                continue
            frames += encode_sub(sub.subject, sub.queue, usid)
            if sub.max_msgs:
                # The new upstream subscription counts from zero: carry over what is left.
                sub.max_msgs -= sub.delivered
                sub.delivered = 0
                if sub.client.echo:
                    frames += encode_unsub(usid, sub.max_msgs)
        return bytes(frames)

    def subscription_refused(self, text: str) -> None:
        """The upstream refused a SUB (permissions): answer each application that asked for it with the
        same -ERR, as nats-server would, and forget the subscription: never replayed on a reconnect, and
        never a reason to drop the shared connection (nats-server keeps it open)."""
        match = _SUB_DENIED.search(text)
        if match is None:
            log.warning("upstream refused a subscription: %s", text)
            return
        subject, queue = match.group(1), match.group(2)
        if subject == self.confirmations.ack_prefix + "*":
            self.confirmations.ack_subscription_refused(subject, text)
            return
        refused = [s for s in self.subs.values() if s.subject == subject and s.queue == queue]
        for sub in refused:
            self._forget_sub(sub)
            if not sub.closing and not sub.client.closed:
                sub.client.send(encode_err(text))
        log.warning(
            "upstream refused a subscription (%d application subscriptions told): %s", len(refused), text
        )

    def local_sub_for(self, client: ClientConnection, subject: str) -> ClientSub | None:
        """The client's first subscription matching `subject` (where a 503 status is delivered)."""
        for sub in client.subs.values():
            if subject_matches(sub.subject, subject):
                return sub
        return None

    # -- echo suppression ----------------------------------------------------------------------------
    def expect_echo(self, client: ClientConnection, msg: OutMsg) -> None:
        """The upstream will echo this message to the client's matching subs: remember it to skip it there.

        One shared upstream connection cannot ask the server not to echo one application's messages, so
        the sidecar drops the echo itself. Messages from one connection reach a subscription in order,
        so the echo is the next identical message on that sub (a byte-identical message from someone else
        is indistinguishable to the application anyway). Queue subscriptions are filtered too (see
        `_is_echo`).
        """
        subs = [s for s in client.subs.values() if subject_matches(s.subject, msg.subject)]
        if not subs:
            return
        subject, reply, _, body = split_pub(msg.frame)
        entry = ((subject, reply, body), self.upstream.pings_written)
        for sub in subs:
            if sub.echoes is None:
                sub.echoes = deque(maxlen=MAX_PENDING_ECHOES)
            sub.echoes.append(entry)

    def clear_echoes(self) -> None:
        """Echoes of messages written on a lost connection will not come."""
        for sub in self.subs.values():
            if sub.echoes:
                sub.echoes.clear()

    def _is_echo(self, sub: ClientSub, msg: Msg) -> bool:
        """Whether `msg` is the echo of the (echo=false) client's own message, to skip. An echo comes before
        the PONG of the first PING written after its message; older expectations are dropped (the server
        gave a queue group's message to another member). On a queue subscription the skipped message goes
        to another member of the group on this sidecar if there is one, as nats-server would pick one."""
        echoes = sub.echoes
        assert echoes is not None
        pongs = self.upstream.pongs_received
        while echoes and echoes[0][1] < pongs:
            echoes.popleft()
        if not echoes or echoes[0][0] != (msg.subject, msg.reply, msg.body):
            return False
        echoes.popleft()
        if sub.queue is not None:
            for other in self.subs.values():
                if (
                    other.client is not sub.client
                    and other.queue == sub.queue
                    and other.subject == sub.subject
                    and not other.closing
                ):
                    other.client.deliver(other, msg.subject, msg.reply, msg.hdr_size, msg.body)
                    other.delivered += 1
                    break
        return True

    # -- upstream messages ---------------------------------------------------------------------------
    def on_upstream_msg(self, msg: Msg) -> None:
        """One upstream MSG to its subscription (or a PubAck to the confirmations)."""
        sub = self.subs.get(msg.sid)
        if sub is None:
            if msg.sid == ACK_SID:
                self.confirmations.on_pub_ack(msg)
            elif (handler := self.own.get(msg.sid)) is not None:
                handler(msg)
            return  # in flight when the application unsubscribed
        client = sub.client
        if sub.echoes and self._is_echo(sub, msg):
            return
        reply = msg.reply
        if reply is not None and not reply.startswith(ROLE_PREFIXES):
            # A custom inbox prefix: what the application publishes there is a reply (policies.roles).
            client.remember_reply(reply.decode("utf-8", "replace"), self.clock())
        client.deliver(sub, msg.subject, reply, msg.hdr_size, msg.body)
        sub.delivered += 1
        if sub.max_msgs and sub.delivered >= sub.max_msgs:
            self._forget_sub(sub)
            if not client.echo:
                self.upstream.unsubscribe(sub.usid)  # the upstream was not given the max (see unsubscribe)

    def on_upstream_msgs(self, run: MsgRun) -> None:
        """A run of plain MSGs: routed in C where `routes` allows, the others one by one, in order."""
        frames = run.frames
        n = len(frames)
        routes = self.routes
        delivered: dict[int, int] = {}
        pos = route_msgs(frames, 0, routes, delivered)  # type: ignore[misc]
        on_upstream_msg = self.on_upstream_msg
        confirmations = self.confirmations
        ack_line = confirmations.ack_line
        while pos < n:
            # PubAcks (JetStream writes them as plain MSGs) are settled in place, a run of them at once.
            end = confirmations.on_pub_acks(frames, pos) if frames.startswith(ack_line, pos) else pos
            if end == pos:
                msg, end = next_msg(frames, pos)
                on_upstream_msg(msg)
            pos = end
            if pos < n:
                pos = route_msgs(frames, pos, routes, delivered)  # type: ignore[misc]
        subs = self.subs
        for usid, count in delivered.items():
            sub = subs.get(usid)
            if sub is not None:
                sub.delivered += count
                sub.client.wake()
