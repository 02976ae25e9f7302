"""Run etcdctl 3.4 against two clusters and compare what it prints.

Rules:

- ``etcdctl(endpoints, *args)`` runs the installed etcdctl with
  ``ETCDCTL_API=3`` and ``--endpoints``, no other ``ETCDCTL_*`` from the
  environment, under a timeout; with ``until_lines`` a command that never
  ends by itself (watch, lock, keep-alive) is stopped by its PID once its
  stdout holds that many lines; ``feed`` ((lines, text), ...) writes each
  text to its stdin once stdout holds that many lines, and keeps stdin open
  until it is stopped (``watch -i`` ends at EOF). It returns a ``Run`` (code, stdout, stderr;
  stdout is bytes, as ``-w protobuf`` prints raw messages).
- ``normalise(run, ids)`` keeps what a client depends on and removes what
  legitimately differs between two clusters that ran the same commands:
  the cluster id, member ids, names, ports and URLs (each member becomes
  ``<member:i>``, ``<endpoint:i>``, ... by its place in the target's
  endpoint list, so the same member keeps its label in every output), lease
  ids (``<lease:n>``, numbered in the order the case first printed them),
  raft terms and indexes, db sizes, the server version, durations, the
  leader's identity (kept: how many rows report a leader), hash values
  (kept: which rows agree), the remaining TTL of a lease when it lies in
  (0, granted], etcdctl's own log timestamps, and the row order of
  per-member listings. Keys, values, revisions, create/mod revisions,
  versions, counts, exit codes and error messages stay byte for byte.
- A ``Case`` is a list of ``Step``s; ``compare(case, a, b)`` runs each step
  on both ``Target``s in turn and reports, per step, "same" or "differs"
  with a diff of the normalised outputs. ``render_markdown(rows)`` writes
  the table (command | flags | result | note) that docs/etcd-compat.md is
  generated from.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import pathlib
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError, Message

from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc

ETCDCTL_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


def etcdctl_binary() -> str | None:
    return shutil.which("etcdctl")


# ---- running etcdctl -----------------------------------------------------------


class Run(NamedTuple):
    """What one etcdctl invocation did. ``code`` is None when the harness
    stopped it (``until_lines`` met, or the timeout: ``timed_out``)."""

    argv: tuple[str, ...]
    code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


def etcdctl(
    endpoints: Sequence[str],
    *args: str,
    stdin: str | bytes | None = None,
    timeout_s: float = ETCDCTL_TIMEOUT_S,
    until_lines: int | None = None,
    feed: Sequence[tuple[int, str]] = (),
) -> Run:
    """Run ``etcdctl --endpoints=... ARGS`` and return what it did."""
    binary = etcdctl_binary()
    if binary is None:
        raise RuntimeError("etcdctl is not installed (apt-get install etcd-client)")
    argv = (binary, f"--endpoints={','.join(endpoints)}", *args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    env["ETCDCTL_API"] = "3"
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if data is not None or feed else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    try:
        if data is not None:
            assert proc.stdin is not None
            proc.stdin.write(data)
            if not feed:
                proc.stdin.close()
            else:
                proc.stdin.flush()
        out, err, stopped = _collect(proc, time.monotonic() + timeout_s, until_lines, feed)
    finally:
        _stop(proc)
    if stopped is None:
        return Run(argv, proc.returncode, out, err)
    return Run(argv, None, out, err, timed_out=stopped == "timeout")


def _collect(
    proc: subprocess.Popen, deadline: float, until_lines: int | None, feed: Sequence[tuple[int, str]] = ()
) -> tuple[bytes, bytes, str | None]:
    """Read both pipes until the process ends, ``until_lines`` lines arrived
    on stdout, or the deadline passed; says which stop it was (None: it ended).
    ``feed``: see ``etcdctl``."""
    assert proc.stdout is not None and proc.stderr is not None
    to_feed = list(feed)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}

    def result(stop: str | None) -> tuple[bytes, bytes, str | None]:
        return bytes(bufs[out_fd]), bytes(bufs[err_fd]), stop

    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            while to_feed and bufs[out_fd].count(b"\n") >= to_feed[0][0]:
                assert proc.stdin is not None
                proc.stdin.write(to_feed.pop(0)[1].encode())
                proc.stdin.flush()
            if until_lines is not None and bufs[out_fd].count(b"\n") >= until_lines:
                return result("until")
            left = deadline - time.monotonic()
            if left <= 0:
                return result("timeout")
            for key, _ in sel.select(timeout=left):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    bufs[key.fd].extend(chunk)
                else:  # EOF
                    sel.unregister(key.fd)
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return result("timeout")
    return result(None)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process this module started (by PID)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()


# ---- what differs between two clusters -------------------------------------------


@dataclass(frozen=True)
class Member:
    index: int  # place of its client address in the target's endpoint list
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]


@dataclass
class Identities:
    """The names one cluster gives to things another cluster names
    differently, learned from its MemberList, plus the lease ids and the
    scratch directory of one target. ``leases`` grows as outputs show them."""

    cluster_id: int
    members: tuple[Member, ...]
    scratch: str = ""
    leases: dict[int, str] = field(default_factory=dict)

    @classmethod
    def learn(cls, endpoints: Sequence[str], scratch: str = "", timeout_s: float = 5.0) -> Identities:
        """Ask the cluster behind ``endpoints`` for its members."""
        errors = []
        for ep in endpoints:
            with grpc.insecure_channel(ep) as ch:
                try:
                    resp = rpc_pb2_grpc.ClusterStub(ch).MemberList(rpc_pb2.MemberListRequest(), timeout=timeout_s)
                except grpc.RpcError as exc:
                    errors.append(f"{ep}: {exc.code()} {exc.details()}")
                    continue
            return cls.from_member_list(resp, endpoints, scratch)
        raise RuntimeError(f"no endpoint answered MemberList: {errors}")

    @classmethod
    def from_member_list(
        cls, resp: rpc_pb2.MemberListResponse, endpoints: Sequence[str], scratch: str = ""
    ) -> Identities:
        def place(m: rpc_pb2.Member) -> int:
            addrs = {_host_port(u) for u in m.clientURLs}
            for i, ep in enumerate(endpoints):
                if ep in addrs:
                    return i
            return len(endpoints) + sorted(x.ID for x in resp.members).index(m.ID)

        members = tuple(
            sorted(
                (Member(place(m), m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs)) for m in resp.members),
                key=lambda m: m.index,
            )
        )
        return cls(resp.header.cluster_id, members, scratch)

    def lease_label(self, lease_id: int) -> str:
        if lease_id not in self.leases:
            self.leases[lease_id] = f"<lease:{len(self.leases) + 1}>"
        return self.leases[lease_id]


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


# Commands whose output has one row per member (listings whose order etcd
# takes from its random member ids, or from goroutines finishing).
_PER_MEMBER = {("member", "list"), ("endpoint", "status"), ("endpoint", "health"), ("endpoint", "hashkv"),
               ("defrag",), ("alarm", "list")}
# Commands that ask each endpoint in turn, so a header's member_id names the
# member of that row; elsewhere it is whichever member etcdctl's balancer
# picked ("<member>").
_PER_ENDPOINT = {("endpoint", "status"), ("endpoint", "hashkv")}
_HEADER_MEMBER_KEYS = {"member_id", "MemberID"}
_LEASE_ARGS = {("lease", "revoke"), ("lease", "timetolive"), ("lease", "keep-alive")}

# etcdctl's column headers of the rows its simple and table printers share
# (etcdctl/ctlv3/command/printer.go).
_COLUMNS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("member", "list"): ("ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"),
    ("endpoint", "status"): ("ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER", "RAFT TERM",
                             "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS"),
    ("endpoint", "hashkv"): ("ENDPOINT", "HASH"),
    ("endpoint", "health"): ("ENDPOINT", "HEALTH", "TOOK", "ERROR"),
    ("snapshot", "status"): ("HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"),
}

_PROTOBUF_OUTPUT: dict[tuple[str, ...], type[Message]] = {
    ("get",): rpc_pb2.RangeResponse,
    ("put",): rpc_pb2.PutResponse,
    ("del",): rpc_pb2.DeleteRangeResponse,
    ("txn",): rpc_pb2.TxnResponse,
    ("member", "list"): rpc_pb2.MemberListResponse,
    ("alarm", "list"): rpc_pb2.AlarmResponse,
}

_GROUPS = {"member", "endpoint", "lease", "alarm", "snapshot", "check", "user", "role", "auth", "move-leader"}
_GO_DURATION = r"(?:\d+(?:\.\d+)?(?:h|ms|m|s|µs|us|ns))+"
_HUMAN_BYTES = r"\d+(?:\.\d+)? (?:B|kB|MB|GB|TB)"


def command_of(args: Sequence[str]) -> tuple[str, ...]:
    """The etcdctl (sub)command words of ``args``: ("get",), ("endpoint", "status")."""
    words = [a for a in args if not a.startswith("-")]
    if not words:
        return ()
    if words[0] in _GROUPS and len(words) > 1:
        return (words[0], words[1])
    return (words[0],)


def output_format(args: Sequence[str]) -> str:
    fmt = "simple"
    for i, a in enumerate(args):
        if a in ("-w", "--write-out") and i + 1 < len(args):
            fmt = args[i + 1]
        elif a.startswith(("-w=", "--write-out=")):
            fmt = a.split("=", 1)[1]
    return fmt


class _Renamer:
    """Token replacements of one output: ids and addresses by identity."""

    def __init__(self, ids: Identities, cmd: tuple[str, ...]) -> None:
        self.ids = ids
        self.cmd = cmd
        self.per_endpoint = cmd in _PER_ENDPOINT
        self.hashes: dict[str, str] = {}
        subs: list[tuple[str, str]] = []
        if ids.scratch:
            subs.append((re.escape(ids.scratch.rstrip("/")), "{tmp}"))
        for m in ids.members:
            for u in m.client_urls:
                subs.append((re.escape(u.rstrip("/")) + r"(?!\d)", f"<client-url:{m.index}>"))
            for u in m.peer_urls:
                subs.append((re.escape(u.rstrip("/")) + r"(?!\d)", f"<peer-url:{m.index}>"))
            for u in m.client_urls:
                subs.append((re.escape(_host_port(u)) + r"(?!\d)", f"<endpoint:{m.index}>"))
        self.subs = [(re.compile(p), r) for p, r in subs]

    def member_label(self, member_id: int) -> str | None:
        for m in self.ids.members:
            if m.id == member_id:
                return f"<member:{m.index}>"
        return None

    def header_member(self, value: str | int) -> str:
        """A header's member_id: the row's member, or any member (see _PER_ENDPOINT)."""
        label = self.member_label(int(value))
        if label is None:
            return f"<not a member: {value}>"
        return label if self.per_endpoint else "<member>"

    def id_label(self, value: int) -> str | None:
        """The label of a known id (cluster, member, lease), else None."""
        if value == 0:
            return None
        if value == self.ids.cluster_id:
            return "<cluster>"
        label = self.member_label(value)
        if label is not None:
            return label
        signed = value - (1 << 64) if value >= 1 << 63 else value
        return self.ids.leases.get(signed)

    def hash_label(self, value: str) -> str:
        if value not in self.hashes:
            self.hashes[value] = f"<hash:{len(self.hashes) + 1}>"
        return self.hashes[value]

    def member_name(self, name: str) -> str:
        for m in self.ids.members:
            if m.name and m.name == name:
                return f"<name:{m.index}>"
        return name

    def text(self, s: str) -> str:
        for pat, rep in self.subs:
            s = pat.sub(rep, s)
        return _ID_TOKEN.sub(self._id_token, s)

    def _id_token(self, m: re.Match[str]) -> str:
        tok = m.group(0)
        candidates = [int(tok, 16)]
        if tok.isdigit():
            candidates.insert(0, int(tok))
        for value in candidates:
            label = self.id_label(value)
            if label is not None:
                return label
        return tok


# Numbers long enough to be an id: decimal or hex (etcdctl prints member ids
# with %x, lease ids with %016x, and both in decimal in json/fields).
_ID_TOKEN = re.compile(r"(?<![0-9A-Za-z<])[0-9a-f]{8,20}(?![0-9A-Za-z>])")
_LEASE_HEX = re.compile(r"\blease ([0-9a-f]{16}) ")


def _learn_leases(ids: Identities, cmd: tuple[str, ...], fmt: str, stdout: str) -> None:
    """Give a label to every lease id this output shows for the first time."""
    if cmd and cmd[0] == "lease":
        if fmt == "simple":
            for m in _LEASE_HEX.finditer(stdout):
                ids.lease_label(int(m.group(1), 16))
            if cmd == ("lease", "list"):
                for line in stdout.splitlines()[1:]:
                    if re.fullmatch(r"[0-9a-f]{16}", line.strip()):
                        ids.lease_label(int(line.strip(), 16))
        elif fmt == "fields":
            for m in re.finditer(r'^"ID" : (-?\d+)$', stdout, re.M):
                ids.lease_label(int(m.group(1)))
        elif fmt == "json":
            for m in re.finditer(r'"(?:ID|id)":(-?\d+)', stdout):
                ids.lease_label(int(m.group(1)))
    # keys shown with their lease
    if fmt == "json":
        for m in re.finditer(r'"lease":(-?\d+)', stdout):
            if int(m.group(1)) != 0:
                ids.lease_label(int(m.group(1)))
    elif fmt == "fields":
        for m in re.finditer(r'^"(?:Prev)?Lease" : (-?\d+)$', stdout, re.M):
            if int(m.group(1)) != 0:
                ids.lease_label(int(m.group(1)))


def learn_leases_from_args(ids: Identities, args: Sequence[str]) -> None:
    """A lease id the case passed to etcdctl (``--lease=ID``, ``lease revoke ID``)."""
    cmd = command_of(args)
    words = [a for a in args if not a.startswith("-")]
    given = [a.split("=", 1)[1] for a in args if a.startswith("--lease=")]
    if cmd in _LEASE_ARGS and len(words) > 2:
        given.append(words[2])
    for v in given:
        if re.fullmatch(r"[0-9a-f]{1,16}", v):
            ids.lease_label(int(v, 16))


def normalise(run: Run, ids: Identities) -> str:
    """The text two clusters must agree on for this run (see the module doc)."""
    args = run.argv[2:]  # after the binary and --endpoints
    cmd = command_of(args)
    fmt = output_format(args)
    learn_leases_from_args(ids, args)
    stdout_raw = run.stdout.decode("utf-8", "backslashreplace") if fmt != "protobuf" else ""
    _learn_leases(ids, cmd, fmt, stdout_raw)
    r = _Renamer(ids, cmd)
    if fmt == "protobuf":
        out = _normalise_protobuf(run.stdout, cmd, r)
    elif fmt == "json":
        out = _normalise_json_lines(stdout_raw, cmd, r)
    else:
        out = _normalise_text(stdout_raw, cmd, fmt, r)
    err = _normalise_stderr(run.stderr.decode("utf-8", "backslashreplace"), cmd, r)
    code = "stopped by the harness" if run.code is None and not run.timed_out else (
        "timed out" if run.timed_out else str(run.code))
    return f"exit: {code}\n--- stdout\n{out}--- stderr\n{err}"


# ---- simple / fields / table ---------------------------------------------------------


def _normalise_text(s: str, cmd: tuple[str, ...], fmt: str, r: _Renamer) -> str:
    s = _strip_progress_bars(s)
    if fmt == "table" and "+-" in s:
        return _normalise_table(s, cmd, r)
    if fmt == "fields":
        return _normalise_fields(s, cmd, r)
    lines = s.splitlines()
    columns = _COLUMNS.get(cmd)
    out: list[str] = []
    leaders = 0
    for line in lines:
        if columns and line.count(", ") >= len(columns) - 1 - (1 if columns[-1] in ("ERRORS", "ERROR") else 0):
            cells = line.split(", ", len(columns) - 1)
            cells += [""] * (len(columns) - len(cells))
            cells, is_leader = _normalise_cells(dict(zip(columns, cells, strict=True)), r)
            leaders += is_leader
            out.append(", ".join(cells))
        else:
            out.append(_normalise_line(line, cmd, r))
    if cmd in _PER_MEMBER:
        out.sort()
    text = "".join(line + "\n" for line in out)
    if cmd == ("endpoint", "status") and columns:
        text += f"(normalised: {leaders} row(s) report IS LEADER true)\n"
    return text


def _normalise_cells(row: dict[str, str], r: _Renamer) -> tuple[list[str], int]:
    is_leader = 0
    out = []
    for col, v in row.items():
        v = v.strip()
        if col == "VERSION":
            v = "<version>" if v else v
        elif col in ("DB SIZE", "TOTAL SIZE"):
            v = re.sub(_HUMAN_BYTES, "<size>", v)
        elif col == "IS LEADER":
            is_leader = int(v == "true")
            v = "<is-leader>"
        elif col in ("RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX"):
            v = re.sub(r"\d+", "<n>", v)
        elif col == "HASH":
            v = r.hash_label(v)
        elif col == "TOOK":
            v = re.sub(_GO_DURATION, "<duration>", v)
        elif col == "NAME":
            v = r.member_name(v)
        else:
            v = r.text(v)
        out.append(v)
    return out, is_leader


def _normalise_table(s: str, cmd: tuple[str, ...], r: _Renamer) -> str:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in s.splitlines()
        if line.startswith("|")
    ]
    if not rows:
        return s
    header, body = rows[0], rows[1:]
    out, leaders = [], 0
    for cells in body:
        if len(cells) == len(header):
            norm, is_leader = _normalise_cells(dict(zip(header, cells, strict=True)), r)
            leaders += is_leader
        else:
            norm = [r.text(c) for c in cells]
        out.append("| " + " | ".join(norm) + " |")
    if cmd in _PER_MEMBER:
        out.sort()
    text = "| " + " | ".join(header) + " |\n" + "".join(line + "\n" for line in out)
    if cmd == ("endpoint", "status"):
        text += f"(normalised: {leaders} row(s) report IS LEADER true)\n"
    return text


_FIELD = re.compile(r'^"(\w+)" : ?(.*)$')


def _normalise_fields(s: str, cmd: tuple[str, ...], r: _Renamer) -> str:
    blocks: list[list[str]] = [[]]
    for line in s.splitlines():
        if not line.strip():
            blocks.append([])
            continue
        blocks[-1].append(line)
    out_blocks = []
    leaders, named = 0, set()
    for block in blocks:
        if not block:
            continue
        vals = {m.group(1): m.group(2) for m in map(_FIELD.match, block) if m}
        if "Leader" in vals:
            named.add(vals["Leader"])
            leaders += vals["Leader"] == vals.get("MemberID")
        out_blocks.append([_normalise_field_line(line, cmd, r, vals) for line in block])
    if cmd in _PER_MEMBER:
        out_blocks.sort()
    text = "".join("".join(line + "\n" for line in b) + "\n" for b in out_blocks)
    if cmd == ("endpoint", "status"):
        text += f"(normalised: {leaders} block(s) name themselves leader; {len(named)} distinct leader(s))\n"
    return text


def _normalise_field_line(line: str, cmd: tuple[str, ...], r: _Renamer, vals: Mapping[str, str]) -> str:
    m = _FIELD.match(line)
    if not m:
        return _normalise_line(line, cmd, r)
    key, v = m.group(1), m.group(2)
    if key in ("RaftTerm", "RaftIndex", "RaftAppliedIndex"):
        v = "<n>"
    elif key == "Version" and v.startswith('"'):
        v = "<version>"
    elif key in ("DBSize", "Size"):
        v = "<size>"
    elif key == "Leader":
        v = "<leader>" if r.member_label(int(v)) else r.text(v)
    elif key in _HEADER_MEMBER_KEYS:
        v = r.header_member(v)
    elif key == "Hash":
        v = r.hash_label(v)
    elif key == "Took":
        v = "<duration>"
    elif key == "Name":
        v = json.dumps(r.member_name(json.loads(v)))
    elif key in ("TTL",) and "GrantedTTL" in vals:
        v = _remaining(v, vals["GrantedTTL"])
    else:
        v = r.text(v)
    return f'"{key}" : {v}'


def _remaining(ttl: str, granted: str) -> str:
    """A remaining TTL inside (0, granted] depends on when it was asked."""
    try:
        if 0 < int(ttl) <= int(granted):
            return "<remaining>"
    except ValueError:
        pass
    return ttl


_LINE_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"took = " + _GO_DURATION), lambda m: "took = <duration>"),
    (re.compile(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)"),
     lambda m: f"granted with TTL({m.group(1)}s), remaining({_remaining(m.group(2), m.group(1))}s)"),
    (re.compile(r"PASS: Throughput is \d+ writes/s"), lambda m: "PASS: Throughput is <n> writes/s"),
    (re.compile(r"FAIL: Throughput too low: \d+ writes/s"), lambda m: "FAIL: Throughput too low: <n> writes/s"),
    (re.compile(r"(Slowest request took|Stddev is|Stddev too high:|Slowest request took too long:) "
                r"\d+\.\d+s"), lambda m: f"{m.group(1)} <seconds>"),
]


# lock and elect print their key, NAME/<the session's lease id in hex, unpadded>:
# a lease no earlier output named.
_SESSION_KEY = re.compile(r"^(\S+)/[0-9a-f]{1,16}$")
_SESSION_COMMANDS = {("lock",), ("elect",)}


def _normalise_line(line: str, cmd: tuple[str, ...], r: _Renamer) -> str:
    for pat, rep in _LINE_RULES:
        line = pat.sub(rep, line)
    if cmd[:1] in _SESSION_COMMANDS:
        line = _SESSION_KEY.sub(r"\1/<session lease>", line)
    return r.text(line)


_PROGRESS = re.compile(r"[^\r\n]*\d+ / \d+ [^\r\n]*%[^\r\n]*")


def _strip_progress_bars(s: str) -> str:
    """Drop the progress bar `check perf` redraws with carriage returns."""
    if "\r" not in s and not _PROGRESS.search(s):
        return s
    out = []
    for line in s.split("\n"):
        parts = [p for p in line.split("\r") if p.strip() and not _PROGRESS.fullmatch(p)]
        if parts:
            out.append(parts[-1])
        elif not line:
            out.append(line)
    return "\n".join(out)


# ---- json and protobuf ----------------------------------------------------------------


_JSON_COUNTERS = {"raft_term", "raftTerm", "raftIndex", "raftAppliedIndex"}
_JSON_SIZES = {"dbSize", "dbSizeInUse", "totalSize"}
_JSON_SORTED_LISTS = {"members"}


def _normalise_json_lines(s: str, cmd: tuple[str, ...], r: _Renamer) -> str:
    out = []
    for line in s.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            out.append(_normalise_line(line, cmd, r))
            continue
        extra = ""
        if cmd == ("endpoint", "status") and isinstance(doc, list):
            extra = _status_leaders(doc)
        doc = _norm_json(doc, r, None)
        if isinstance(doc, list) and cmd in _PER_MEMBER:
            doc.sort(key=lambda d: json.dumps(d, sort_keys=True))
        out.append(json.dumps(doc, sort_keys=True) + extra)
    return "".join(line + "\n" for line in out)


def _status_leaders(rows: list[Any]) -> str:
    leaders, named = 0, set()
    for row in rows:
        st = row.get("Status", {}) if isinstance(row, dict) else {}
        named.add(st.get("leader"))
        leaders += st.get("leader") == st.get("header", {}).get("member_id")
    return f"\n(normalised: {leaders} row(s) name themselves leader; {len(named)} distinct leader(s))"


def _norm_json(v: Any, r: _Renamer, key: str | None, parent: Mapping[str, Any] | None = None) -> Any:
    if isinstance(v, dict):
        return {k: _norm_json(x, r, k, v) for k, x in v.items()}
    if isinstance(v, list):
        items = [_norm_json(x, r, key, parent) for x in v]
        if key in _JSON_SORTED_LISTS:
            items.sort(key=lambda d: json.dumps(d, sort_keys=True))
        return items
    if key in _JSON_COUNTERS:
        return "<n>"
    if key in _JSON_SIZES:
        return "<size>"
    if key == "version" and isinstance(v, str):
        return "<version>"
    if key == "leader":
        return "<leader>" if r.member_label(int(v)) else v
    if key in _HEADER_MEMBER_KEYS:
        return r.header_member(v)
    if key == "hash":
        return r.hash_label(str(v))
    if key == "took":
        return "<duration>"
    if key == "name" and isinstance(v, str):
        return r.member_name(v)
    granted = parent.get("grantedTTL", parent.get("granted-ttl")) if parent is not None else None
    if key in ("TTL", "ttl") and granted is not None:
        rem = _remaining(str(v), str(granted))
        return rem if rem.startswith("<") else v
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int) or (isinstance(v, str) and re.fullmatch(r"-?\d{6,20}", v)):
        n = int(v)
        label = r.id_label(n if n >= 0 else n + (1 << 64))
        return label if label is not None else v
    if isinstance(v, str):
        return r.text(v)
    return v


def _normalise_protobuf(raw: bytes, cmd: tuple[str, ...], r: _Renamer) -> str:
    cls = _PROTOBUF_OUTPUT.get(cmd)
    if cls is None:
        return "raw " + raw.hex() + "\n"
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        return f"undecodable {cls.__name__} ({exc}): {raw.hex()}\n"
    unknown = unknown_fields(msg)
    doc = message_to_plain(msg)
    _learn_leases_from_dict(r.ids, doc)
    text = json.dumps(_norm_json(doc, r, None), sort_keys=True)
    return f"{cls.__name__} {text}\n" + (f"unknown fields: {unknown}\n" if unknown else "")


def message_to_plain(msg: Message) -> dict[str, Any]:
    """The fields ``msg`` carries on the wire, as etcdctl's json printer
    names them: proto field names, ints as ints, bytes in base64, enums by
    name, unset proto3 scalars absent."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        def one(v: Any) -> Any:
            if fd.message_type is not None:
                return message_to_plain(v)
            if fd.type == fd.TYPE_BYTES:
                return base64.b64encode(v).decode()
            if fd.enum_type is not None:
                return fd.enum_type.values_by_number[v].name if v in fd.enum_type.values_by_number else v
            return v
        out[fd.name] = [one(v) for v in value] if fd.is_repeated else one(value)
    return out


def _learn_leases_from_dict(ids: Identities, doc: Any) -> None:
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "lease" and str(v).lstrip("-").isdigit() and int(v) != 0:
                ids.lease_label(int(v))
            _learn_leases_from_dict(ids, v)
    elif isinstance(doc, list):
        for x in doc:
            _learn_leases_from_dict(ids, x)


def unknown_fields(msg: Message, path: str = "") -> list[str]:
    """Paths of every field ``msg`` (recursively) did not know: a message of
    ours that cannot name every field of etcd's is a broken contract."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    out = [f"{path or msg.DESCRIPTOR.name}#{f.field_number}" for f in UnknownFieldSet(msg)]
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            for i, item in enumerate(value):
                out += unknown_fields(item, f"{path}{fd.name}[{i}].")
        else:
            out += unknown_fields(value, f"{path}{fd.name}.")
    return out


# ---- stderr -------------------------------------------------------------------------


_ZAP_KEPT = ("level", "msg", "error")


def _normalise_stderr(s: str, cmd: tuple[str, ...], r: _Renamer) -> str:
    out = []
    for line in s.splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and "level" in doc and "msg" in doc:
                kept = {k: doc[k] for k in _ZAP_KEPT if k in doc}
                if "error" in kept:
                    kept["error"] = r.text(str(kept["error"]))
                out.append("log " + json.dumps(kept, sort_keys=True))
                continue
        out.append(_normalise_line(line, cmd, r))
    if cmd in _PER_MEMBER:
        out.sort()
    return "".join(line + "\n" for line in out)


# ---- cases ----------------------------------------------------------------------------


@dataclass
class Target:
    """One cluster a case runs on: its endpoints, a scratch directory for
    files the commands write (``{tmp}`` in a step's arguments), and the
    values steps captured from its outputs (``{name}``)."""

    name: str
    endpoints: list[str]
    scratch: pathlib.Path
    captured: dict[str, str] = field(default_factory=dict)
    _ids: Identities | None = None

    @property
    def ids(self) -> Identities:
        if self._ids is None:
            self._ids = Identities.learn(self.endpoints, str(self.scratch))
        return self._ids


@dataclass(frozen=True)
class Step:
    """One etcdctl command of a case. ``args`` come after ``--endpoints``
    and may name ``{tmp}`` and values captured by earlier steps (so may
    ``stdin`` and the texts of ``feed``, see ``etcdctl``);
    ``capture`` maps a name to a regex whose first group is read from this
    step's stdout. ``one_endpoint``: only the target's first endpoint
    (``snapshot save`` refuses several). ``command``/``flags``/``note``
    describe the step in the markdown table (derived from ``args`` when
    empty)."""

    args: tuple[str, ...]
    stdin: str | None = None
    one_endpoint: bool = False
    capture: Mapping[str, str] = field(default_factory=dict)
    until_lines: int | None = None
    feed: tuple[tuple[int, str], ...] = ()
    timeout_s: float = ETCDCTL_TIMEOUT_S
    command: str = ""
    flags: str = ""
    note: str = ""

    def describe(self) -> tuple[str, str]:
        cmd = self.command or " ".join(command_of(self.args))
        flags = self.flags or " ".join(
            f"{a} {self.args[i + 1]}" if a in ("-w", "--write-out") and i + 1 < len(self.args) else a
            for i, a in enumerate(self.args)
            if a.startswith("-")
        )
        return cmd, flags


@dataclass(frozen=True)
class Case:
    name: str
    steps: Sequence[Step]


@dataclass(frozen=True)
class StepReport:
    step: Step
    runs: tuple[Run, Run]
    normalised: tuple[str, str]

    @property
    def same(self) -> bool:
        return self.normalised[0] == self.normalised[1]

    @property
    def raw_same(self) -> bool:
        a, b = self.runs
        return (a.code, a.stdout, a.stderr) == (b.code, b.stdout, b.stderr)

    def diff(self, names: tuple[str, str] = ("a", "b")) -> str:
        return "".join(difflib.unified_diff(
            self.normalised[0].splitlines(keepends=True), self.normalised[1].splitlines(keepends=True),
            fromfile=names[0], tofile=names[1],
        ))


@dataclass(frozen=True)
class CaseReport:
    case: Case
    targets: tuple[str, str]
    steps: tuple[StepReport, ...]

    @property
    def all_same(self) -> bool:
        return all(s.same for s in self.steps)

    def render(self) -> str:
        """Per step: "same" or "differs" with the diff of the normalised outputs."""
        lines = [f"case {self.case.name}: {self.targets[0]} vs {self.targets[1]}"]
        for s in self.steps:
            cmd = " ".join(s.step.args)
            if s.same:
                lines.append(f"  same     etcdctl {cmd}")
            else:
                lines.append(f"  differs  etcdctl {cmd}")
                lines += ["    " + d for d in s.diff(self.targets).splitlines()]
        return "\n".join(lines) + "\n"


def run_step(step: Step, target: Target) -> Run:
    values = {"tmp": str(target.scratch), **target.captured}
    args = tuple(a.format_map(values) for a in step.args)
    stdin = step.stdin.format_map(values) if step.stdin is not None else None
    eps = target.endpoints[:1] if step.one_endpoint else target.endpoints
    feed = tuple((n, text.format_map(values)) for n, text in step.feed)
    run = etcdctl(eps, *args, stdin=stdin, timeout_s=step.timeout_s, until_lines=step.until_lines, feed=feed)
    out = run.stdout.decode("utf-8", "replace")
    for name, pattern in step.capture.items():
        m = re.search(pattern, out)
        if m is None:
            raise AssertionError(f"{target.name}: etcdctl {' '.join(args)}: no {pattern!r} in its output:\n"
                                 f"{out}\n{run.stderr.decode(errors='replace')}")
        target.captured[name] = m.group(1)
    return run


def compare(case: Case, a: Target, b: Target) -> CaseReport:
    """Run every step of ``case`` on ``a`` then on ``b``, step by step."""
    reports = []
    for step in case.steps:
        runs = (run_step(step, a), run_step(step, b))
        normalised = (normalise(runs[0], a.ids), normalise(runs[1], b.ids))
        reports.append(StepReport(step, runs, normalised))
    return CaseReport(case, (a.name, b.name), tuple(reports))


# ---- the compatibility table ------------------------------------------------------


@dataclass(frozen=True)
class Row:
    command: str
    flags: str
    result: str
    note: str = ""


def rows_from(report: CaseReport, same: str = "works", differs: str = "differs") -> list[Row]:
    """One row per step: ``same`` when the outputs matched after
    normalisation, else ``differs`` with the first differing line as note."""
    rows = []
    for s in report.steps:
        cmd, flags = s.step.describe()
        if s.same:
            rows.append(Row(cmd, flags, same, s.step.note))
        else:
            changed = [d for d in s.diff().splitlines()[2:] if d[:1] in "+-"]
            note = s.step.note or (changed[0] if changed else "")
            rows.append(Row(cmd, flags, differs, note))
    return rows


def render_markdown(rows: Iterable[Row]) -> str:
    """The rows as a markdown table (command | flags | result | note)."""

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    def code(s: str) -> str:
        return f"`{esc(s)}`" if s else ""

    lines = ["| command | flags | result | note |", "|---|---|---|---|"]
    lines += [f"| {code(r.command)} | {code(r.flags)} | {esc(r.result)} | {esc(r.note)} |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = [
    "Case", "CaseReport", "Identities", "Member", "Row", "Run", "Step", "StepReport", "Target",
    "command_of", "compare", "etcdctl", "etcdctl_binary", "normalise", "output_format",
    "render_markdown", "rows_from", "run_step", "unknown_fields",
]
