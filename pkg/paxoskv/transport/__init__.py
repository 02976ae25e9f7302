"""ZeroMQ ROUTER/DEALER peer bus: one encoded Envelope per ZeroMQ message (see :mod:`.bus`)."""

from paxoskv.transport.bus import BusClosed, BusStats, DropReason, PeerBus, PeerStatus

__all__ = ["BusClosed", "BusStats", "DropReason", "PeerBus", "PeerStatus"]
