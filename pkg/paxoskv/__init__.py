"""paxoskv: a fault-tolerant, linearizable, replicated key-value store on Multi-Paxos."""

__version__ = "0.1.0"
