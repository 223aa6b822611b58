"""The journal of unconfirmed writes: segments by PING, confirmed by PONG count, bounded by bytes."""

from __future__ import annotations

from proxy.upstream.journal import RunEntry, WriteJournal


def test_a_pong_confirms_only_what_was_written_before_its_ping() -> None:
    journal = WriteJournal(limit=1000)
    journal.add("a", 100, ping=0)  # written before PING 1
    journal.add("b", 100, ping=0)
    journal.add("c", 100, ping=1)  # written after PING 1: PING 2 covers it
    assert journal.nbytes == 300
    journal.confirm(pongs=1)
    assert journal.entries() == ["c"] and journal.nbytes == 100
    journal.confirm(pongs=2)
    assert journal.entries() == [] and journal.nbytes == 0


def test_full_at_the_limit_and_take_all_empties_it_oldest_first() -> None:
    journal = WriteJournal(limit=250)
    for i, ping in enumerate((0, 0, 1)):
        journal.add(i, 100, ping)
        assert journal.full is (i == 2)
    assert journal.take_all() == [0, 1, 2]
    assert journal.nbytes == 0 and not journal.full and journal.entries() == []


def test_remove_settles_one_entry() -> None:
    journal = WriteJournal(limit=1000)
    run = RunEntry(None, b"PUB a 1\r\nx\r\n", {"a": 1})
    journal.add("m", 10, 0)
    journal.add(run, 12, 0)
    journal.remove("m", 10)
    assert journal.entries() == [run] and journal.nbytes == 12
