"""The etcdctl command lists the compatibility tests run on two clusters.

Each is a ``Case`` of ``etcdctl_compat``; run one with
``compare(case, target_a, target_b)``. They are written for a fresh cluster
(the revisions they print depend on it) and leave their keys behind.
"""

from __future__ import annotations

from etcdctl_compat import Case, Step

_REV = r'"revision":(\d+)'
_LEASE = r"lease ([0-9a-f]{16}) granted"

# Every flag group of put/get/del, txn, compaction.
KV = Case("kv", (
    Step(("put", "/app/a", "1")),
    Step(("put", "/app/b", "2")),
    Step(("put", "/app/c", "3")),
    Step(("put", "/app/a", "10", "--prev-kv"), flags="--prev-kv"),
    Step(("put", "/app/b", "--ignore-value"), flags="--ignore-value"),
    Step(("put", "/missing", "--ignore-value"), flags="--ignore-value", note="on a missing key"),
    Step(("put", "/zoo", "z")),
    Step(("get", "/app/a")),
    Step(("get", "/app/", "--prefix")),
    Step(("get", "/app/b", "--from-key")),
    Step(("get", "/app/a", "/app/c"), command="get", flags="(key range_end)"),
    Step(("get", "/app/", "--prefix", "--limit=2")),
    Step(("get", "/app/", "--prefix", "--limit=2", "-w", "json")),
    Step(("get", "/app/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND")),
    Step(("get", "/app/", "--prefix", "--sort-by=CREATE", "--order=ASCEND")),
    Step(("get", "/app/", "--prefix", "--sort-by=VALUE", "--order=DESCEND")),
    Step(("get", "/app/", "--prefix", "--sort-by=VERSION")),
    Step(("get", "/app/", "--prefix", "--order=DESCEND")),
    Step(("get", "/app/", "--prefix", "--keys-only")),
    Step(("get", "/app/", "--prefix", "--count-only"), note="etcdctl 3.4 has no --count-only (3.5 added it)"),
    Step(("get", "/app/", "--prefix", "--print-value-only")),
    Step(("get", "/app/", "--prefix", "--consistency=s")),
    Step(("get", "/app/a", "-w", "json"), capture={"rev_a": _REV}),
    Step(("get", "/app/a", "-w", "fields")),
    Step(("get", "/app/a", "-w", "protobuf")),
    Step(("get", "/app/a", "--rev=2")),
    Step(("get", "/app/a", "--rev=999"), flags="--rev", note="a future revision"),
    Step(("get", "", "--prefix", "--keys-only"), flags="--prefix", note="empty prefix: every key"),
    Step(("get", "/nothing")),
    Step(("get", "/app/", "--prefix", "--print-value-only", "-w", "json"), note="refused by etcdctl itself"),
    Step(("del", "/app/c", "--prev-kv")),
    Step(("del", "/nothing")),
    Step(("put", "/tmp/x", "1")),
    Step(("put", "/tmp/y", "2")),
    Step(("del", "/tmp/", "--prefix", "--prev-kv", "-w", "json")),
    Step(("put", "/tmp/y", "3")),
    Step(("del", "/tmp/x", "--from-key"), note="deletes /zoo as well"),
    Step(("txn", "-i"), stdin='value("/app/a") = "10"\nmod("/app/b") > "0"\n\nput /app/t yes\nget /app/a\n\n'
                                'put /app/t no\n\n', note="compares true"),
    Step(("txn", "-i"), stdin='version("/app/a") = "9"\n\nput /app/t yes\n\nget /app/t\ndel /app/b\n\n',
         note="compares false"),
    Step(("txn", "-i", "-w", "json"), stdin='create("/app/a") < "100"\n\nget /app/ --prefix\n\n\n'),
    Step(("txn", "-i"), stdin='value("/app/a") != "x"\n\nput /app/u 1\nput /app/u 2\n\n\n',
         note="the same key twice"),
    Step(("get", "", "--prefix", "-w", "json"), capture={"rev": _REV}),
    Step(("compaction", "3")),
    Step(("get", "/app/a", "--rev=2"), flags="--rev", note="below the compaction"),
    Step(("compaction", "2"), note="below the compaction"),
    Step(("compaction", "{rev}", "--physical"), command="compaction", flags="--physical"),
    Step(("get", "/app/", "--prefix", "--rev={rev}"), flags="--rev"),
))

# Leases, listed and revoked; a key that goes with its lease.
LEASE = Case("lease", (
    Step(("lease", "grant", "600"), capture={"lease": _LEASE}),
    Step(("put", "/leased", "v", "--lease={lease}"), flags="--lease"),
    Step(("put", "/leased", "w", "--ignore-lease"), flags="--ignore-lease"),
    Step(("get", "/leased", "-w", "json")),
    Step(("lease", "timetolive", "{lease}", "--keys")),
    Step(("lease", "timetolive", "{lease}", "-w", "json")),
    Step(("lease", "list")),
    Step(("lease", "keep-alive", "--once", "{lease}"), flags="--once"),
    Step(("lease", "revoke", "{lease}")),
    Step(("get", "/leased")),
    Step(("lease", "timetolive", "{lease}")),
    Step(("lease", "revoke", "{lease}"), note="an unknown lease"),
    Step(("put", "/leased", "v", "--lease=1234"), flags="--lease", note="an unknown lease"),
    Step(("lease", "grant", "0"), capture={"zero": _LEASE}, note="TTL 0: granted with the minimum TTL, as etcd"),
    Step(("lease", "keep-alive", "--once", "{lease}"), flags="--once", note="a revoked lease"),
    Step(("lease", "revoke", "{zero}")),
))

# The cluster and its members: status, health, hashes, alarms, defrag, snapshot.
MAINTENANCE = Case("maintenance", (
    Step(("member", "list")),
    Step(("member", "list", "-w", "table")),
    Step(("member", "list", "-w", "json")),
    Step(("endpoint", "status")),
    Step(("endpoint", "status", "--cluster", "-w", "table")),
    Step(("endpoint", "status", "-w", "json")),
    Step(("endpoint", "status", "-w", "fields")),
    Step(("endpoint", "health")),
    Step(("endpoint", "health", "--cluster", "-w", "json")),
    Step(("endpoint", "hashkv", "--cluster")),
    Step(("endpoint", "hashkv", "-w", "json")),
    Step(("alarm", "list")),
    Step(("defrag",)),
    Step(("defrag", "--cluster")),
    Step(("snapshot", "save", "{tmp}/snap.db"), one_endpoint=True),
    Step(("snapshot", "status", "{tmp}/snap.db"), note="reads the saved file"),
    Step(("snapshot", "status", "{tmp}/snap.db", "-w", "json"), note="reads the saved file"),
    Step(("snapshot", "save", "{tmp}/snap2.db"), note="several endpoints"),
))

# Watches replaying a known history from a revision (their output does not
# depend on timing): a prefix, a range, prev_kv, a revision of two events,
# `watch -i` with a progress request, a start below the compaction.
_W = "{w0}"
WATCH = Case("watch", (
    Step(("put", "/w/a", "1", "-w", "json"), capture={"w0": _REV}, note="the first revision watched below"),
    Step(("put", "/w/b", "2")),
    Step(("put", "/w/a", "3")),
    Step(("del", "/w/b")),
    Step(("txn", "-i"), stdin="\nput /w/c 4\nput /w/d 5\n\n\n", note="two events in one revision"),
    Step(("put", "/x", "outside")),
    Step(("watch", "/w/", "--prefix", f"--rev={_W}"), until_lines=18, timeout_s=10.0, flags="--prefix --rev"),
    Step(("watch", "/w/a", "/w/c", f"--rev={_W}"), until_lines=12, timeout_s=10.0, flags="(key range_end) --rev"),
    Step(("watch", "/w/a", f"--rev={_W}", "--prev-kv"), until_lines=8, timeout_s=10.0, flags="--rev --prev-kv"),
    Step(("watch", "", "--prefix", f"--rev={_W}"), until_lines=21, timeout_s=10.0, flags="--prefix --rev",
         note="empty prefix: every key"),
    Step(("watch", "-i"), feed=((0, f"watch /w/ --prefix --rev={_W}\n"), (18, "progress\n")), until_lines=19,
         timeout_s=10.0, flags="-i (watch, progress)", note="progress after the history: the current revision"),
    Step(("get", "/x", "-w", "json"), capture={"wx": _REV}),
    Step(("compaction", "{wx}")),
    Step(("watch", "/w/a", f"--rev={_W}"), timeout_s=10.0, flags="--rev", note="below the compaction"),
))

ALL = (KV, LEASE, MAINTENANCE, WATCH)

# A minute of 150 puts/s from 50 clients; PASS needs > 135/s, the slowest
# put under 0.5 s and a stddev under 0.1 s (etcdctl/ctlv3/command/check.go).
CHECK_PERF = Case("check-perf", (
    Step(("check", "perf", "--load=s"), timeout_s=150.0),
    Step(("get", "/etcdctl-check-perf/", "--prefix", "--keys-only"), note="check perf deletes its keys"),
))
