"""``paxoskv bench``: a closed-loop load generator for paxoskv and its peers.

Theory of operation
-------------------
The parent process (``runner.run``) starts ``processes`` worker processes
(multiprocessing, *spawn*: no gRPC state crosses a fork). Each worker runs
one asyncio loop with its own gRPC channel to every endpoint and keeps
``concurrency`` requests in flight, closed-loop: a slot sends its next
request only when its previous one answered. Slots are spread round-robin
over the endpoints, so every node of the cluster takes client load.

A run has four phases, the same clock for every process (``time.monotonic``
is system-wide on Linux): *setup* (connect, wait until the target answers,
optionally pre-fill the keys a read will ask for), *warmup* (load, not
recorded), *measure* (operations completing in the window are recorded in a
mergeable latency histogram per operation kind) and *drain* (no new request;
the ones in flight are awaited and not recorded). Throughput is operations
completed in the window divided by its length.

The same worker code drives every target, and it is raw: methods called as
bytes in, bytes out, request bodies encoded once per key. A target
(``targets.py``) only gives the method paths and the bytes of "get key" /
"put key value" / "this batch", so paxoskv and etcd are measured on equal
terms and the client costs as little as Python's gRPC lets it. A *mode*
(``unary``, ``batch``, ``stream``) says how operations travel: one RPC each,
many per RPC (paxoskv's PackedBatch, etcd's Txn), or as messages of one
bidirectional stream per endpoint. The runner samples CPU at the window's
boundaries: the workers' (client) and, given their PIDs, the servers'.

Modules: ``workload`` (mixes, keys, values), ``histogram`` (latencies),
``targets`` (paxoskv, etcd), ``worker`` (one process), ``runner`` (the
processes and the merged result; ``runner.drive`` starts, synchronises
and collects any such processes), ``cpu`` (CPU of process trees over a
window), ``report`` (table and JSON), ``cli``; ``etcdstreams`` (etcd's
Watch and LeaseKeepAlive streams under load: event latency, keep-alive
throughput; ``bench/compare``'s watch and keepalive jobs); ``etcdpb``
(etcd's generated messages, for ``--target etcd``).

Two folders, one rule: this package is what ``paxoskv bench`` ships, the
load generator and what it needs to reach a server, and it imports nothing
from ``bench/``. The repository's ``bench/`` is the comparison harness, run
from a checkout and never installed: ``compare`` and the clusters it starts
(``clusters.py``: paxoskv, etcd, PySyncObj, the stand-ins), the stand-in
servers and their shared front end (``standin.py``), and ``floor.py``. A
module that only the harness uses lives in ``bench/``.
"""
