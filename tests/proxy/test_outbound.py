"""The bound on bytes pending to all applications together: at the limit the slowest is cut first."""

from __future__ import annotations

import asyncio

from proxy.ports.outbound import OutboundBudget


class FakeTransport:
    def __init__(self) -> None:
        self.size = 0

    def get_write_buffer_size(self) -> int:
        return self.size


class FakeClient:
    """What the budget reads of a ClientConnection."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.name = f"c{client_id}"
        self.reported_pending = 0
        self.transport = FakeTransport()
        self.closed = False

    def flushed(self, budget: OutboundBudget, size: int) -> None:
        self.transport.size = size
        budget.update(self, size)

    def cut_slow_consumer(self) -> None:
        self.closed = True


async def test_passing_the_bound_cuts_the_one_with_most_pending_until_under_it() -> None:
    budget = OutboundBudget(asyncio.get_running_loop(), lambda: 1000)
    a, b, c = FakeClient(1), FakeClient(2), FakeClient(3)
    a.flushed(budget, 400)
    b.flushed(budget, 300)
    c.flushed(budget, 300)
    assert budget.total == 1000 and not any(x.closed for x in (a, b, c))  # at the bound: nobody cut
    b.flushed(budget, 301)
    assert a.closed and not b.closed and not c.closed  # the slowest (most pending) first
    assert budget.total == 601 and budget.cuts == 1


async def test_recount_reads_buffers_that_drained_since_their_flush() -> None:
    budget = OutboundBudget(asyncio.get_running_loop(), lambda: 1000)
    a, b = FakeClient(1), FakeClient(2)
    a.flushed(budget, 900)
    a.transport.size = 0  # the kernel took it all since
    b.flushed(budget, 500)  # over the bound by the stale count: recounted first, nobody is cut
    assert not a.closed and not b.closed and budget.total == 500
    budget.forget(b)
    assert budget.total == 0
