"""Deliveries: application subscriptions, and the upstream messages routed to them.

One job: the routing table from upstream subscription ids (`usid`) to application subscriptions, as
nats-server's `sublist.go` and `client.go` deliver, with identical non-queue subscriptions merged into one
upstream subscription as a leaf node merges interest (docs/architecture.md, "Merged interest"). Subscribe
(joining a merged subscription), unsubscribe (with max counts, and the
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
from proxy.config.schema import ClientsConfig
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
from proxy.pipeline.interest import Interest
from proxy.pipeline.message import OutMsg
from proxy.ports.subscription import ClientSub
from proxy.upstream.connection import Upstream

if TYPE_CHECKING:
    from proxy.pipeline.delivery_flow import DeliveryFlow
    from proxy.ports.nats_port import ClientConnection

log = logging.getLogger(__name__)

# Reply subjects under these prefixes have their role by themselves; others are remembered per client.
ROLE_PREFIXES = tuple(prefix.encode() for prefix, _ in roles.ROLE_PREFIXES)
# -ERR 'Permissions Violation for Subscription to "<subject>"[ using queue "<queue>"]' (nats-server).
_SUB_DENIED = re.compile(r'subscription to "(.*?)"(?: using queue "(.*?)")?\s*$', re.IGNORECASE)
# Bound on the echoes one echo=false subscription waits for (its client's own in-flight messages).
MAX_PENDING_ECHOES = 10_000


class Deliveries:
    """The routing table (`interests`, and `routes` for the C router) and delivery of upstream messages."""

    def __init__(
        self,
        upstream: Upstream,
        clock: Callable[[], float],
        confirmations: Confirmations,
        limits: Callable[[], ClientsConfig] = ClientsConfig,
    ) -> None:
        self.upstream = upstream
        self.clock = clock
        self.confirmations = confirmations
        # clients.maxSubscriptions (per connection) and maxTotalSubscriptions, read at each SUB.
        self.limits = limits
        self.members = 0  # application subscriptions, retiring ones included
        self.refused = 0  # SUBs refused at a limit
        # usid -> the upstream subscription and its members; `merged` finds the live non-queue one of a
        # subject. Both hold at most one entry per application subscription (bounded by the clients').
        self.interests: dict[int, Interest] = {}
        self.merged: dict[str, Interest] = {}
        # Upstream subscriptions whose plain MSGs the C router writes straight to each member (usid ->
        # ((client, client sid), ...)): all but those with an echo=false member or one with a max count.
        self.routes: dict[int, tuple[tuple[ClientConnection, bytes], ...]] = {}
        self._usids = itertools.count(1)
        # The sidecar's own subscriptions (e.g. the fleet's KV watch): usid -> handler, never routed to
        # an application. Their SUBs are sent by their owners (see Sidecar.resubscribe_frames).
        self.own: dict[int, Callable[[Msg], None]] = {}
        # Told of each application a run was routed to (holds the upstream while one is behind).
        self.flow: DeliveryFlow | None = None

    def reserve(self, count: int) -> tuple[int, ...]:
        """`count` subscription ids for the sidecar's own subscriptions (route them through `own`)."""
        return tuple(next(self._usids) for _ in range(count))

    # -- subscriptions -------------------------------------------------------------------------------
    def subscribe(self, client: ClientConnection, op: Sub) -> bool:
        """An application's SUB: a member of the live upstream subscription of that subject (non-queue),
        or of a new one, SUB written upstream; routed at once. False: refused at a limit (the client
        answers -ERR 'maximum subscriptions exceeded', as nats-server does, and keeps its connection)."""
        if op.sid in client.subs:
            return True  # nats-server ignores a SUB that reuses a live sid
        limits = self.limits()
        if len(client.subs) >= limits.max_subscriptions or self.members >= limits.max_total_subscriptions:
            self.refused += 1
            return False
        interest = self.merged.get(op.subject) if op.queue is None else None
        new = interest is None
        if interest is None:
            interest = Interest(next(self._usids), op.subject, op.queue)
            self.interests[interest.usid] = interest
            if op.queue is None:
                self.merged[op.subject] = interest
        sub = ClientSub(client, op.sid, op.subject, op.queue, interest.usid)
        client.subs[op.sid] = sub
        interest.members.append(sub)
        self.members += 1
        interest.live += 1
        if new:
            self._route(interest)
            self.upstream.subscribe(interest.usid, op.subject, op.queue)
        elif self.upstream.connected:
            # nats-server delivers to a new SUB what it processes after it: messages already on their
            # way (a publish of this very client just before its SUB, say) are not for this member. It
            # takes part from the PONG of a PING written here, ahead of what the client does next.
            sub.joined = False
            self.upstream.confirm_here(lambda _ok: self._joined(sub))
        else:
            self._route(interest)  # the reconnect replays the one SUB
        return True

    def _joined(self, sub: ClientSub) -> None:
        sub.joined = True
        interest = self.interests.get(sub.usid)
        if interest is None or sub not in interest.members:
            return  # gone before the PONG
        route = self.routes.get(interest.usid)
        if route is not None and self._routable(sub) and interest.members[-1] is sub:
            self.routes[interest.usid] = (*route, (sub.client, sub.sid_bytes))  # the members' order
        else:
            self._route(interest)

    @staticmethod
    def _routable(sub: ClientSub) -> bool:
        client = sub.client
        return client.echo and not sub.max_msgs and not client.closed

    def _route(self, interest: Interest) -> None:
        """Let the C router deliver this upstream subscription's plain MSGs to its members, or stop it."""
        members = [m for m in interest.members if m.joined]  # those still joining get nothing yet
        if route_msgs is not None and members and all(self._routable(m) for m in members):
            self.routes[interest.usid] = tuple((m.client, m.sid_bytes) for m in members)
        else:
            self.routes.pop(interest.usid, None)

    def route(self, sub: ClientSub) -> None:
        """The subscription's client or max count changed: route its upstream subscription again."""
        interest = self.interests.get(sub.usid)
        if interest is not None:
            self._route(interest)

    def unsubscribe(self, client: ClientConnection, sid: str, max_msgs: int | None) -> None:
        """An application's UNSUB: a max count to reach, or retire the subscription now."""
        sub = client.subs.get(sid)
        if sub is None:
            return
        interest = self.interests.get(sub.usid)
        if interest is None:  # defensive: an interest ends only once its members left their clients
            del client.subs[sid]
            return
        if max_msgs is not None and max_msgs > sub.delivered:
            sub.max_msgs = max_msgs
            self._route(interest)  # counted one by one from now on
            if interest.queue is not None and client.echo:
                # A queue subscription is alone upstream, and the server must stop giving it the group's
                # messages: the upstream sub has counted the same deliveries, so the absolute max applies.
                # (Not for echo=false: the echoes the sidecar skips count upstream; it unsubscribes itself.
                # Nor for a merged subscription: its other members want more; its members count locally.)
                interest.upstream_max = True
                self.upstream.unsubscribe(sub.usid, max_msgs)
            return
        del client.subs[sid]
        self._retire(interest, sub)

    def drop_client(self, client: ClientConnection) -> None:
        """A closed client: its subscriptions go, upstream too where it was the last member."""
        for sub in client.subs.values():
            self._remove(sub)
        client.subs.clear()
        for sub in client.retiring:
            self._remove(sub)
        client.retiring.clear()

    def _release(self, interest: Interest) -> None:
        """No live member left: UNSUB upstream (members still retiring get only what is in flight)."""
        if interest.live or interest.unsubscribed:
            return
        interest.unsubscribed = True
        if self.merged.get(interest.subject) is interest:
            del self.merged[interest.subject]
        self.upstream.unsubscribe(interest.usid)

    def _remove(self, sub: ClientSub) -> None:
        """Take a member out of its upstream subscription now; the last one out ends it."""
        interest = self.interests.get(sub.usid)
        if interest is None:
            return
        try:
            interest.members.remove(sub)
        except ValueError:
            return
        self.members -= 1
        if not sub.closing:
            interest.live -= 1
            self._release(interest)
        if interest.members:
            self._route(interest)
        else:
            del self.interests[interest.usid]
            self.routes.pop(interest.usid, None)
            if self.merged.get(interest.subject) is interest:
                del self.merged[interest.subject]

    def _retire(self, interest: Interest, sub: ClientSub) -> None:
        """Keep delivering what the upstream sent before it processed the UNSUB, as nats-server's own
        in-flight messages reach an application after its UNSUB (nats-py's drain() counts on them): the
        member goes once the PONG of a PING written after the UNSUB is back. Per member: the upstream
        subscription itself stays while other members are live."""
        if not self.upstream.connected:
            self._remove(sub)
            return
        sub.closing = True
        interest.live -= 1
        self._release(interest)
        sub.client.retiring.add(sub)
        # Placed now: what the client publishes after its UNSUB is not delivered to this member, also
        # while the upstream subscription stays for the others.
        self.upstream.confirm_here(lambda _ok: self._forget_retired(sub))

    def _forget_retired(self, sub: ClientSub) -> None:
        sub.client.retiring.discard(sub)
        self._remove(sub)

    def _forget_sub(self, sub: ClientSub) -> None:
        """Drop a subscription everywhere (the upstream refused it, or its max count was reached)."""
        client = sub.client
        if client.subs.get(sub.sid) is sub:
            del client.subs[sub.sid]
        client.retiring.discard(sub)
        self._remove(sub)

    def resubscribe_frames(self) -> bytes:
        """One SUB per upstream subscription with a live member (merged subjects once; remaining max
        counts for queue subscriptions), sent on each (re)connect."""
        frames = bytearray(self.confirmations.ack_frames())
        for usid, interest in list(self.interests.items()):
            for sub in [m for m in interest.members if m.closing]:
                self._forget_retired(sub)  # its UNSUB went with the lost connection: nothing more comes
            if usid not in self.interests:
                continue
            frames += encode_sub(interest.subject, interest.queue, usid)
            for sub in interest.members:
                if sub.max_msgs:
                    # A new upstream subscription counts from zero: carry over what is left.
                    sub.max_msgs -= sub.delivered
                    sub.delivered = 0
                    if interest.upstream_max and sub.client.echo:
                        frames += encode_unsub(usid, sub.max_msgs)
        return bytes(frames)

    def subscription_refused(self, text: str) -> None:
        """The upstream refused a SUB (permissions): answer each application subscription that asked for
        it with the same -ERR, as nats-server would answer each SUB, and forget it: never replayed on a
        reconnect, and never a reason to drop the shared connection (nats-server keeps it open)."""
        match = _SUB_DENIED.search(text)
        if match is None:
            log.warning("upstream refused a subscription: %s", text)
            return
        subject, queue = match.group(1), match.group(2)
        if subject == self.confirmations.ack_prefix + "*":
            self.confirmations.ack_subscription_refused(subject, text)
            return
        refused = [
            sub
            for interest in list(self.interests.values())
            if interest.subject == subject and interest.queue == queue
            for sub in interest.members
        ]
        for sub in refused:
            if not sub.closing and not sub.client.closed:
                sub.client.send(encode_err(text))
        for sub in refused:
            sub.closing = True  # refused upstream: nothing to UNSUB there
            self._forget_sub(sub)
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
        for interest in self.interests.values():
            for sub in interest.members:
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
            for interest in self.interests.values():
                if interest.queue != sub.queue or interest.subject != sub.subject:
                    continue
                other = interest.members[0]
                if other.client is not sub.client and not other.closing:
                    other.client.deliver(other, msg.subject, msg.reply, msg.hdr_size, msg.body)
                    other.delivered += 1
                    break
        return True

    # -- upstream messages ---------------------------------------------------------------------------
    def on_upstream_msg(self, msg: Msg) -> None:
        """One upstream MSG to each member of its subscription (or a PubAck to the confirmations)."""
        interest = self.interests.get(msg.sid)
        if interest is None:
            if msg.sid == ACK_SID:
                self.confirmations.on_pub_ack(msg)
            elif (handler := self.own.get(msg.sid)) is not None:
                handler(msg)
            return  # in flight when the application unsubscribed
        reply = msg.reply
        # A custom inbox prefix: what the application publishes there is a reply (policies.roles).
        custom = reply is not None and not reply.startswith(ROLE_PREFIXES)
        members = interest.members
        client = None
        for sub in members if len(members) == 1 else tuple(members):
            if not sub.joined or (sub.echoes and self._is_echo(sub, msg)):
                continue
            client = sub.client
            if custom:
                client.remember_reply(reply.decode("utf-8", "replace"), self.clock())  # type: ignore[union-attr]
            client.deliver(sub, msg.subject, reply, msg.hdr_size, msg.body)
            sub.delivered += 1
            if sub.max_msgs and sub.delivered >= sub.max_msgs:
                if interest.upstream_max:
                    interest.unsubscribed = True  # the upstream removes it itself at the same count
                self._forget_sub(sub)  # the last member out UNSUBs upstream (see _release)
        if client is not None and self.flow is not None:
            self.flow.check(client)  # one member for all: they were given the same bytes

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
        interests = self.interests
        flow = self.flow
        for usid, count in delivered.items():
            interest = interests.get(usid)
            if interest is not None:
                for sub in interest.members:
                    if not sub.joined:
                        continue
                    sub.delivered += count
                    client = sub.client
                    client.wake()
                    if flow is not None:
                        flow.check(client)
