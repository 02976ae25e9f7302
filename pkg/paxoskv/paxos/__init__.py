"""The Multi-Paxos consensus core: pure, no sockets, clocks, disks or threads."""
