"""The writer's lanes (pure): live work first, history in bounded slices, each account's
order kept; and the Backlog that pauses the writer's feeders while a lane is full."""
from __future__ import annotations

from store_fixtures import msg
from wasync.actors.writer_lanes import Backlog, Lanes, ops_of, split
from wasync.actors.writer_protocol import AccountUpdate, IngestBatch
from wasync.runtime.account import AccountPatch


def history(account: str, count: int, seqs=(1,)) -> IngestBatch:
    return IngestBatch(account, seqs, messages=tuple(msg(id=f"{account}-H{n}", account=account) for n in range(count)),
                       bulk=True)


def live(account: str, name: str = "L") -> IngestBatch:
    return IngestBatch(account, (9,), received_ms=(1,), messages=(msg(id=f"{account}-{name}", account=account),))


def ids(items) -> list[str]:
    return [m.id for item in items if isinstance(item, IngestBatch) for m in item.messages]


def test_live_work_of_other_accounts_goes_before_a_history_burst_and_history_comes_in_slices():
    lanes = Lanes(slice_ops=1_000)
    lanes.add(history("big", 2_500))
    lanes.add(live("small"))
    first = lanes.take()
    assert ids(first.live) == ["small-L"]
    assert len(ids(first.bulk)) == 1_000 and ids(first.bulk)[0] == "big-H0"
    lanes.finished(first.items, first)
    assert lanes.bulk_ops == 1_500 and lanes.live_ops == 0
    second, third = lanes.take(), None
    lanes.finished(second.items, second)
    third = lanes.take()
    assert [len(ids(t.bulk)) for t in (second, third)] == [1_000, 500]
    assert ids(third.bulk)[-1] == "big-H2499" and not lanes


def test_the_rows_of_a_split_batch_leave_with_its_last_piece_and_a_refused_head_names_them():
    batch = history("big", 10, seqs=(4, 5))
    head, rest = split(batch, 3)
    assert head.seqs == () and head.seqs_if_refused == (4, 5) and len(head.messages) == 3 and head.patch is None
    assert rest.seqs == (4, 5) and len(rest.messages) == 7 and rest.bulk
    assert ops_of(head) + ops_of(rest) == ops_of(batch)


def test_an_accounts_live_work_waits_behind_its_own_history_until_all_of_it_is_written():
    lanes = Lanes(slice_ops=100)
    lanes.add(history("big", 150))
    assert lanes.add(live("big", "after")) is True  # behind its history: order kept
    update = AccountUpdate("big", AccountPatch(realtime_error="x"))
    assert lanes.add(update) is True
    first = lanes.take()
    assert ids(first.live) == [] and len(ids(first.bulk)) == 100
    assert lanes.add(live("big", "during")) is True  # its history is still being written
    lanes.finished(first.items, first)
    second = lanes.take()
    assert ids(second.bulk)[-3:] == ["big-H149", "big-after", "big-during"] and second.bulk[-2] is update
    lanes.finished(second.items, second)
    assert lanes.add(live("big", "later")) is False  # all written: live again


def test_a_failed_flush_goes_back_to_the_front_of_its_lanes_in_order():
    lanes = Lanes(slice_ops=100)
    lanes.add(history("big", 150))
    lanes.add(live("a", "1"))
    taken = lanes.take()
    lanes.add(live("a", "2"))
    lanes.put_back(taken)
    assert ids(lanes.live) == ["a-1", "a-2"]
    assert len(ids(lanes.bulk)) == 150 and ids(lanes.bulk)[0] == "big-H0"
    assert lanes.live_ops == 2 and lanes.bulk_ops == 150
    assert lanes.add(live("big", "x")) is True  # its history was not written: still behind it


def test_a_full_lane_turns_feeders_away_and_wakes_each_once_when_half_empty():
    backlog = Backlog(live_limit_ops=100, bulk_limit_ops=1_000)
    woken = []
    assert backlog.has_room(False, "a", lambda: woken.append("a"))
    backlog.set(live_ops=100, bulk_ops=0)
    assert not backlog.has_room(False, "a", lambda: woken.append("a"))
    assert not backlog.has_room(False, "a", lambda: woken.append("a"))  # asked twice, woken once
    assert backlog.has_room(True, "h", lambda: woken.append("h"))  # the other lane has room
    backlog.set(live_ops=60, bulk_ops=0)
    assert woken == []  # not yet half empty
    backlog.set(live_ops=50, bulk_ops=0)
    assert woken == ["a"]
    backlog.set(live_ops=0, bulk_ops=0)
    assert woken == ["a"]


def test_work_handed_to_the_writer_counts_until_it_takes_it():
    # A writer stuck in a store call takes nothing from its mailbox: that is memory too.
    backlog = Backlog(live_limit_ops=3, bulk_limit_ops=1_000)
    woken = []
    handed = [IngestBatch("a", (n,), messages=(msg(id=f"M{n}"),)) for n in range(3)]
    for batch in handed:
        assert backlog.has_room(False, "a", lambda: woken.append("a"))
        backlog.handing(batch)
    assert not backlog.has_room(False, "a", lambda: woken.append("a"))  # the writer's lanes are still empty
    assert backlog.has_room(True, "h", None)  # counted in its own lane
    for n, batch in enumerate(handed, start=1):
        backlog.set(live_ops=n, bulk_ops=0, taken=batch)  # taken into the lanes: the same three
    assert woken == []
    backlog.set(live_ops=1, bulk_ops=0)  # written
    assert woken == ["a"]
    # Work nobody said it was handing is taken off too, never below zero.
    backlog.set(live_ops=1, bulk_ops=0, taken=AccountUpdate("a", AccountPatch(phone="1")))
    backlog.handing(handed[0])
    backlog.set(live_ops=0, bulk_ops=0)
    assert backlog.has_room(False, "a", None)  # 1 handed < 3
    backlog.handing(handed[1])
    backlog.handing(handed[2])
    assert not backlog.has_room(False, "a", None)


def test_one_feeder_at_a_time_reads_history_and_hands_its_turn_to_the_next():
    backlog = Backlog(live_limit_ops=100, bulk_limit_ops=1_000, bulk_readers=1)
    woken = []
    assert backlog.has_room(True, "a", lambda: woken.append("a"))
    assert backlog.has_room(True, "a", lambda: woken.append("a"))  # its own turn still
    assert not backlog.has_room(True, "b", lambda: woken.append("b"))
    assert not backlog.has_room(True, "c", lambda: woken.append("c"))
    assert not backlog.has_room(True, "sweeper", None)  # asks again by itself: never woken
    assert backlog.has_room(False, "d", lambda: woken.append("d"))  # live work needs no turn
    backlog.read_done("a")
    assert woken == ["b"]  # one turn, one feeder woken
    assert backlog.has_room(True, "b", lambda: None)
    backlog.read_done("b")
    assert woken == ["b", "c"]


def test_a_wake_that_fails_costs_the_other_waiters_nothing():
    """A feeder that stopped while it waited (its actor is gone) must not leave the others
    parked for good: their wake-ups were already taken off the list."""
    backlog = Backlog(live_limit_ops=100, bulk_limit_ops=1_000)
    woken = []

    def gone():
        raise RuntimeError("actor stopped")

    backlog.set(live_ops=100, bulk_ops=0)
    assert not backlog.has_room(False, "gone", gone)
    assert not backlog.has_room(False, "b", lambda: woken.append("b"))
    backlog.set(live_ops=0, bulk_ops=0)
    assert woken == ["b"]
