"""The splice of a switching subscription: the stored history, then the live entries buffered
meanwhile, with no gap and no duplicate (docs/streaming.md; the steps in subscription.py).

While switching, the feed is subscribed and confirmed and its entries are buffered. The stores
are read up to ``read_to`` (the top read, or past the highest entry already buffered) and sent;
then ``splice`` says, without any I/O, whether the buffer continues what was sent exactly: if
so its entries are sent and the subscription is live, otherwise the stores are read again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from latest_server.stores.ranges import Entry

Buffered = tuple[int, int, int, bytes]  # a live entry held while switching: epoch, seq, ts, doc


def read_to(top: int, epoch: int, buffered: Iterable[Buffered]) -> int:
    """The seq to read the stores up to: the variable's top as read, or the highest seq of
    ``epoch`` buffered (it was published after the top was read), whichever is higher."""
    return max([top, *(b[1] for b in buffered if b[0] == epoch)])


def splice(epoch: int, seq: int, buffered: Sequence[Buffered]) -> list[Buffered] | None:
    """The buffered entries to send after ``seq`` (everything up to it has been sent) before
    the subscription is live, in seq order, each seq once, the first ``seq + 1``; those at or
    below ``seq`` are overlaps with the stores and left out. None: read the stores again, as
    the buffer holds an entry of another epoch (Redis lost its data) or does not continue
    ``seq`` exactly (pub/sub lost an entry: the stores have it)."""
    rest = sorted({b[1]: b for b in buffered if b[0] == epoch and b[1] > seq}.items())
    if any(b[0] != epoch for b in buffered):
        return None
    if all(found == seq + n for n, (found, _) in enumerate(rest, start=1)):
        return [b for _, b in rest]
    return None


def diverged(sent: Iterable[tuple[int, int]], seq: int, stored: Iterable[Entry]) -> int | None:
    """The first seq at or below ``seq`` among the last entries ``sent`` (seq, ts) whose stored
    entry is another one (another ts): history was replaced from there (a failover to a replica
    that lacked them, and newer writes took their seqs). None if every one is as sent; a seq no
    tier holds is not counted (the range reader names it as lost)."""
    ts_of = {entry.seq: entry.ts for entry in stored}
    for sent_seq, ts in sent:
        if sent_seq <= seq and ts_of.get(sent_seq, ts) != ts:
            return sent_seq
    return None
