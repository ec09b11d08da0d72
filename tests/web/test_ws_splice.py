"""The splice of a switching subscription (web/ws/splice.py), as a pure function: whatever the
live feed buffered, what is sent is the stored history then the buffer's continuation, with no
gap, no duplicate and in seq order, and it goes live whenever the buffer allows it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from latest_server.web.ws.splice import Buffered, read_to, splice

EPOCH = 7


def live(seq: int, epoch: int = EPOCH) -> Buffered:
    return (epoch, seq, seq * 10, b"{}")


# What the feed may have buffered: any seqs, in any order, repeated, and now and then one of
# another epoch (pub/sub loses and repeats entries; a Redis that lost its data starts another).
buffers = st.lists(
    st.tuples(st.sampled_from([EPOCH, EPOCH, EPOCH, EPOCH + 1]), st.integers(1, 60)).map(
        lambda pair: live(pair[1], pair[0])
    ),
    max_size=30,
)


@given(sent=st.integers(0, 40), top=st.integers(0, 40), before=buffers, during=buffers)
def test_what_is_sent_continues_the_stored_history_without_gap_or_duplicate(
    sent: int, top: int, before: list[Buffered], during: list[Buffered]
) -> None:
    """``sent``: the last seq sent; the stores are read to ``read_to`` and sent, while the feed
    buffers ``during``; then the splice."""
    top = max(top, sent)
    high = read_to(top, EPOCH, before)
    assert high >= top and all(b[1] <= high for b in before if b[0] == EPOCH)
    stored = list(range(sent + 1, high + 1))
    buffered = before + during
    spliced = splice(EPOCH, high, buffered)
    if any(b[0] != EPOCH for b in buffered):
        assert spliced is None  # another epoch: read the position again
        return
    if spliced is None:  # a hole above what was read: the stores are read again
        above = {b[1] for b in buffered if b[1] > high}
        assert above and set(range(high + 1, max(above) + 1)) != above
        return
    seqs = stored + [b[1] for b in spliced]
    assert seqs == list(range(sent + 1, sent + 1 + len(seqs)))  # in order, no gap, no duplicate
    assert all(b in buffered for b in spliced)
    assert {b[1] for b in spliced} == {b[1] for b in buffered if b[1] > high}  # nothing left


@given(
    sent=st.integers(0, 40),
    top=st.integers(0, 40),
    start=st.integers(1, 60),
    count=st.integers(0, 30),
    repeats=st.lists(st.integers(0, 29), max_size=5),
)
def test_a_buffer_that_continues_the_stores_goes_live_with_all_of_it(
    sent: int, top: int, start: int, count: int, repeats: list[int]
) -> None:
    """Pub/sub delivered every entry from ``start`` on (some twice): live, ending at the last."""
    top = max(top, sent)
    start = min(start, top + 1)  # the feed was subscribed before the top was read
    buffered = [live(seq) for seq in range(start, start + count)]
    buffered += [buffered[i] for i in repeats if i < len(buffered)]
    high = read_to(top, EPOCH, [])
    spliced = splice(EPOCH, high, buffered)
    assert spliced is not None
    end = max([high, *(b[1] for b in buffered)])
    assert [b[1] for b in spliced] == list(range(high + 1, end + 1))


def test_a_lost_entry_is_read_from_the_stores_and_then_spliced() -> None:
    """Pub/sub lost seq 6: the splice refuses the buffer, the stores are read past it, and the
    next splice sends what is left."""
    buffered = [live(5), live(7), live(8)]
    assert splice(EPOCH, 5, buffered) is None
    high = read_to(5, EPOCH, buffered)
    assert high == 8
    assert splice(EPOCH, high, [*buffered, live(9)]) == [live(9)]
