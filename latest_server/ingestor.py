"""The single writer: every edge turns its input into Packets and calls ``Ingestor.write_batch``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from latest_server.errors import StoreRefused
from latest_server.offload import OffloadTrigger
from latest_server.packets import Packet
from latest_server.sessions import Refusal, SessionStore
from latest_server.stores.base import DeleteOutcome, LatestStore, WriteOutcome
from latest_server.stores.variables import VariableIndex


@dataclass(slots=True)
class BatchResult:
    accepted: int = 0  # became the latest document of their variable
    # older than (or, in external mode, as old as) the stored latest; kept in history
    stale: int = 0
    duplicates: int = 0  # already in history (redelivered); a subset of stale
    outcomes: list[WriteOutcome] = field(default_factory=list)  # of the samples, in order
    # Session documents refused at write time (bad_transition): index into the packets given.
    refused: list[Refusal] = field(default_factory=list)
    # Positions (among the packets given) of the session documents applied to their session
    # rather than written: they have no outcome.
    documents: list[int] = field(default_factory=list)


Origin = TypeVar("Origin")


class Origins(Generic[Origin]):
    """Where each packet of a batch came from (a position in a body, a message and the index
    in it, a ``_bulk`` item), so an edge answers what the write refused or did at the place
    the packet came from. ``add`` records a packet as it passes to ``write_batch``, so a
    generator of packets still streams; ``packets`` is the list, for a caller that retries."""

    __slots__ = ("origins", "packets")

    def __init__(self) -> None:
        self.origins: list[Origin] = []
        self.packets: list[Packet] = []

    def add(self, origin: Origin, packet: Packet) -> Packet:
        self.origins.append(origin)
        self.packets.append(packet)
        return packet

    def refused(self, result: BatchResult) -> list[tuple[Origin, Packet, Refusal]]:
        """The packets refused at write time, with their origins and why."""
        return [(self.origins[r.index], self.packets[r.index], r) for r in result.refused]

    def outcomes(self, result: BatchResult) -> Iterator[tuple[Origin, Packet, WriteOutcome]]:
        """Each written packet (session documents are not: see ``refused``) with its origin
        and outcome, in order."""
        written: Iterable[int] = range(len(self.packets))
        if result.documents:
            applied = set(result.documents)
            written = [i for i in written if i not in applied]
        for i, outcome in zip(written, result.outcomes, strict=True):
            yield self.origins[i], self.packets[i], outcome


class Ingestor:
    def __init__(
        self,
        latest: LatestStore,
        offload: OffloadTrigger | None = None,
        *,
        sessions: SessionStore | None = None,
        variables: VariableIndex | None = None,
    ) -> None:
        self.latest = latest
        self.variables = variables  # the index of variables (GET /variables), kept here
        self.sessions = sessions
        self.offload = offload
        self.totals = BatchResult()

    async def write_batch(self, packets: Iterable[Packet]) -> BatchResult:
        """Write packets in one round trip. Raises StoreUnavailable when the store cannot be
        reached; part of the batch may then be written, and the caller retries the whole batch,
        which is safe because every write is idempotent. ``packets`` may be a generator: the store
        builds its commands from it as it sends them.

        Session documents (packets.SESSION_FIELD) are applied to their session, after the samples
        of the same batch are written: a session that ends finds its last samples in history."""
        documents: list[tuple[int, Packet]] = []
        tracked: list[tuple[int, Packet]] = []  # session samples, by position among those written
        written: list[Packet] = []  # what the store got, in order: one outcome each

        def take() -> Iterator[Packet]:
            for i, packet in enumerate(packets):
                if packet.session_doc is not None and self.sessions is not None:
                    documents.append((i, packet))
                    continue
                if packet.session_id is not None:
                    tracked.append((len(written), packet))
                written.append(packet)
                yield packet

        try:
            outcomes = await self.latest.write_batch(take())
        except StoreRefused as exc:
            # Out of memory, only an offload job frees memory: it must be started by the writes
            # Redis refuses too, or a server that reached maxmemory would never recover.
            if exc.condition == "OOM" and self.offload is not None:
                self.offload.poke()
            raise
        if self.variables is not None:
            # Before the batch is acknowledged: a crash after the write and before this leaves
            # the batch unacknowledged, and its retry indexes the variables.
            await self.variables.written(written, outcomes)
        result = BatchResult(outcomes=outcomes)
        if self.sessions is not None:
            if tracked:
                await self.sessions.track(
                    [packet for _, packet in tracked], [outcomes[i].seq for i, _ in tracked]
                )
            if documents:
                result.documents = [i for i, _ in documents]
                result.refused = await self.sessions.apply(documents)
                result.accepted += len(documents) - len(result.refused)
        for outcome in outcomes:
            if outcome.applied:
                result.accepted += 1
            else:
                result.stale += 1
                if outcome.seq == 0:
                    result.duplicates += 1
        self.totals.accepted += result.accepted
        self.totals.stale += result.stale
        self.totals.duplicates += result.duplicates
        if self.offload is not None:
            self.offload.poke()  # cheap: a clock check; memory is read at most once a second
        return result

    async def delete(
        self, variable_id: str, key: str, version: int | None = None, version_type: str = "external"
    ) -> DeleteOutcome:
        """Delete a latest document (the Elasticsearch-compatible API's DELETE). Its version stays
        as a tombstone, so an older packet cannot bring the document back; history is kept."""
        return await self.latest.delete(variable_id, key, version, version_type)
