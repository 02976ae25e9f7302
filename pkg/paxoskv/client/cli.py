"""``paxoskv put | get | delete | status``: the command-line client.

Rules:

- Every command takes ``--endpoints HOST:PORT,...`` (env ``PAXOSKV_ENDPOINTS``,
  default ``localhost:50051``): any node or several; the client finds the
  leader and retries on its own until ``--timeout`` seconds (env
  ``PAXOSKV_TIMEOUT``, default 5) have passed.
- Bytes: KEY and VALUE arguments are UTF-8 text, or with ``--hex`` /
  ``--base64`` the hex / base64 of any bytes (then ``get`` prints the value
  that way too). ``put KEY -`` reads the value from stdin and ``put KEY
  --value-file PATH`` from a file, as raw bytes, never decoded. ``get``
  writes the value's bytes as they are, then a newline; ``get --raw`` the
  bytes alone (``get --raw KEY > file`` gives back what ``put KEY - < file``
  stored). An argument that is not valid UTF-8 (or not valid hex or base64)
  is a usage error: one line, exit 2.
- Each error has one wording whichever command meets it: the key and value
  checks are ``paxoskv.kv.commands.validate_op``'s, made here before any
  call (the cluster makes them too).
- Output a script can rely on: ``put`` prints ``OK``; ``delete`` prints ``1``
  if the key existed and ``0`` if not (both succeed); with ``--json`` each
  prints one JSON object with the store's revision the write left (``put``:
  ``revision``, ``existed``; ``delete``: ``deleted``, ``revision``); ``get`` prints the
  value; ``get --prefix`` each key and its value on lines of their own
  (etcdctl's form); ``get --json`` the keys with their revisions; ``txn``
  prints ``SUCCESS`` or ``FAILURE`` (both succeed), then each op's answer
  as put, delete and get print it; ``status`` prints a table (``--json``: a
  JSON list).
- Conditional writes: ``put --if-version N`` / ``--if-mod-revision N`` /
  ``--if-value V`` write only if the key has that version (0: absent), mod
  revision or value, and otherwise print why not on stderr and exit 1,
  having written nothing. ``txn --if COMPARE --then OP --else OP`` (each
  repeatable): COMPARE is ``version(KEY) = N`` (also ``mod``, ``create``,
  ``value``; ``=``, ``!=``, ``<``, ``>``), OP ``put KEY VALUE``, ``del KEY``
  or ``get KEY`` (those two with ``--prefix``); words with spaces in quotes.
- Exit codes (``EXIT_*``): 0 ok; 1 the key has no value (``get``; stderr says
  "key not found"), or a conditional put's condition did not hold; 2 usage error or a request the cluster refused as
  invalid (empty key, over a size limit); 3 unavailable or timed out (no
  quorum, no node reachable; ``status``: some endpoint did not answer);
  4 any other error. An expected error is one line on stderr, never a
  traceback.
- TLS: ``--cacert CA --cert CERT --key KEY`` (env ``PAXOSKV_CACERT``,
  ``PAXOSKV_CERT``, ``PAXOSKV_KEY``; etcdctl's names): any of them speaks
  TLS, trusting CA; CERT and KEY are the client certificate a node with
  ``--client-cert-auth`` asks for. A node that refuses the handshake
  answers as an unreachable one does (exit 3).
- Each invocation is a new client with a random client_id, so a retry inside
  one invocation is applied once; running the same ``put`` twice is two
  writes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import shlex
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from paxoskv.client.client import (
    ClientError,
    DeadlineExceeded,
    InvalidArgument,
    KeyValue,
    NodeStatus,
    OutOfRange,
    RangeResult,
    StaleSequence,
    TxnResult,
    Unavailable,
    Unreachable,
)
from paxoskv.client import txn as t
from paxoskv.cli_options import option, tls_options
from paxoskv.client.diagnose import quorum_report
from paxoskv.client.sync import SyncClient
from paxoskv.kv.commands import Limits, validate_op
from paxoskv.tls import ClientTLS, client_tls
from paxoskv.wire import ConfigError, parse_endpoints

__all__ = [
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OTHER",
    "EXIT_UNAVAILABLE",
    "delete_cmd",
    "get_cmd",
    "put_cmd",
    "status_cmd",
    "txn_cmd",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_NOT_MET = 1  # a conditional put whose condition did not hold
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3
EXIT_OTHER = 4

F = TypeVar("F", bound=Callable[..., Any])
LIMITS = Limits()  # the cluster's (they are the same on every node)
DIAGNOSE_TIMEOUT_S = 0.5  # the Status round that says why a request failed


def _common(f: F) -> F:
    return option("--endpoints")(option("--timeout")(tls_options(f)))


def _tls(tls_cacert: str | None, tls_cert: str | None, tls_key: str | None) -> ClientTLS | None:
    try:
        return client_tls(tls_cacert, tls_cert, tls_key)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _endpoints(text: str) -> list[str]:
    try:
        return parse_endpoints(text)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoints") from None


def _client(endpoints: str, timeout_s: float, tls: dict[str, str | None]) -> SyncClient:
    # A refused connection fails at once: retrying cannot make a node appear.
    return SyncClient(_endpoints(endpoints), timeout_s=timeout_s, retry_unreachable=False, tls=_tls(**tls))


def _fail(cmd: str, exc: ClientError, client: SyncClient, *, write: bool) -> NoReturn:
    """One line on stderr for ``exc`` and its exit code. When the cluster could
    not serve the request, the members' Status answers say why if they can
    (``quorum_report``)."""
    if isinstance(exc, (InvalidArgument, StaleSequence, OutOfRange)):
        rc = EXIT_INVALID
    elif isinstance(exc, (Unavailable, DeadlineExceeded)):
        rc = EXIT_UNAVAILABLE
    else:
        rc = EXIT_OTHER
    message = str(exc)
    if rc == EXIT_UNAVAILABLE and not isinstance(exc, Unreachable):
        report = quorum_report(client.status_all(timeout_s=DIAGNOSE_TIMEOUT_S))
        if report is not None:
            late = write and isinstance(exc, DeadlineExceeded)
            message = report + ("; the write may still be applied" if late else "")
    click.echo(f"paxoskv {cmd}: error: {message}", err=True)
    sys.exit(rc)


def _encoding(f: F) -> F:
    """``--hex`` / ``--base64``: how KEY and VALUE arguments (and get's output) are written."""
    f = click.option(
        "--base64", "b64", is_flag=True, help="KEY and VALUE arguments (and get's output) are base64."
    )(f)
    return click.option(
        "--hex", "hex_", is_flag=True, help="KEY and VALUE arguments (and get's output) are hex."
    )(f)


class _Usage(Exception):
    """A usage error: one line, exit 2."""


def _usage_exit(cmd: str, message: str) -> NoReturn:
    click.echo(f"paxoskv {cmd}: error: {message}", err=True)
    sys.exit(EXIT_INVALID)


def _check_text(values: dict[str, object]) -> None:
    """Every text argument is valid UTF-8 (argv and the environment arrive as
    str with lone surrogates standing for the bytes that were not)."""
    for name, value in values.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                what = name.upper() if name in ("key", "value") else "--" + name.replace("_", "-")
                raise _Usage(
                    f"{what} is not valid UTF-8 (give binary keys and values with --hex or --base64, "
                    f"or a value with --value-file or - for stdin)"
                ) from None


def _mode(hex_: bool, b64: bool) -> str:
    if hex_ and b64:
        raise _Usage("--hex and --base64 exclude each other")
    return "hex" if hex_ else "base64" if b64 else "text"


def _decode(text: str, mode: str, what: str) -> bytes:
    if mode == "hex":
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise _Usage(f"{what} is not valid hex: {text!r}") from None
    if mode == "base64":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, binascii.Error):
            raise _Usage(f"{what} is not valid base64: {text!r}") from None
    return text.encode("utf-8")


def _encode(data: bytes, mode: str) -> bytes:
    if mode == "hex":
        return data.hex().encode()
    if mode == "base64":
        return base64.b64encode(data)
    return data


def _read_value(source: str, limit: int) -> bytes:
    """A value from a file or (``-``) stdin, as raw bytes; over ``limit`` is refused
    with the byte count, without holding more than ``limit`` bytes."""
    try:
        f = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise _Usage(f"--value-file {source}: {exc.strerror}") from None
    with contextlib.ExitStack() as stack:
        if f is not sys.stdin.buffer:
            stack.enter_context(f)
        data = f.read(limit + 1)
        if len(data) <= limit:
            return data
        total = len(data)
        while chunk := f.read(1 << 20):
            total += len(chunk)
    raise _Usage(f"value is {total} bytes, more than the limit of {limit}")


def _validate(key: bytes, value: bytes = b"") -> None:
    err = validate_op("", 0, key, value, LIMITS)
    if err is not None:
        raise _Usage(err)


def _run_command(cmd: str, params: dict[str, object], body: Callable[[], None]) -> None:
    """``body()`` after the text checks; a usage error becomes one line and exit 2."""
    try:
        _check_text(params)
        body()
    except _Usage as exc:
        _usage_exit(cmd, str(exc))


@click.command("put")
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--value-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Read the value from this file (raw bytes; - for stdin) instead of VALUE.",
)
@click.option("--if-version", type=click.IntRange(min=0), default=None, metavar="N",
              help="Write only if KEY has this version (0: KEY does not exist); else exit 1.")
@click.option("--if-mod-revision", type=click.IntRange(min=0), default=None, metavar="N",
              help="Write only if KEY was last changed at this revision (0: absent); else exit 1.")
@click.option("--if-value", default=None, metavar="V",
              help="Write only if KEY's value is V (written as KEY is: text, --hex or --base64); else exit 1.")
@click.option("--json", "as_json", is_flag=True, help='Print {"revision": R, "existed": B} instead of OK (R: the put\'s mod revision).')
@_encoding
@_common
def put_cmd(
    key: str,
    value: str | None,
    value_file: str | None,
    if_version: int | None,
    if_mod_revision: int | None,
    if_value: str | None,
    as_json: bool,
    hex_: bool,
    b64: bool,
    endpoints: str,
    timeout_s: float,
    **tls: str | None,
) -> None:
    """Set KEY to VALUE (prints OK).

    VALUE is text, or with --hex / --base64 any bytes written so; "-" reads
    the value from stdin, --value-file PATH from a file (raw bytes, not
    decoded, up to 1 MiB). With --if-version, --if-mod-revision or
    --if-value (one of them) it is a compare-and-swap: nothing is written
    unless KEY is so, and then it says why on stderr and exits 1. --json
    prints the store's revision the put created (KEY's mod revision).
    """

    def body() -> None:
        mode = _mode(hex_, b64)
        key_b = _decode(key, mode, "KEY")
        if (value is None) == (value_file is None):
            raise _Usage("give the value as VALUE, as - (stdin) or with --value-file PATH (one of them)")
        if value_file is not None:
            value_b = _read_value(value_file, LIMITS.value_bytes_max)
        elif value == "-":
            value_b = _read_value("-", LIMITS.value_bytes_max)
        else:
            value_b = _decode(value, mode, "VALUE")
        _validate(key_b, value_b)
        conditions = {
            name: v
            for name, v in (("version", if_version), ("mod_revision", if_mod_revision), ("value", if_value))
            if v is not None
        }
        if len(conditions) > 1:
            raise _Usage("give one of --if-version, --if-mod-revision and --if-value")
        if "value" in conditions:
            conditions["value"] = _decode(if_value, mode, "--if-value")  # type: ignore[arg-type]
        with _client(endpoints, timeout_s, tls) as c:
            try:
                if not conditions:
                    written = c.put(key_b, value_b)
                else:
                    result = c.put_if(key_b, value_b, **conditions)  # type: ignore[arg-type]
            except ClientError as exc:
                _fail("put", exc, c, write=True)
        if conditions and not result.succeeded:
            click.echo(f"paxoskv put: not written: {_not_met(key, result, conditions)}", err=True)
            sys.exit(EXIT_NOT_MET)
        if as_json:
            answer = (
                {"revision": written.revision, "existed": written.existed}
                if not conditions
                else {"revision": result.revision, "succeeded": True}
            )
            click.echo(json.dumps(answer))
            return
        click.echo("OK")

    _run_command("put", {"key": key, "value": value, "if_value": if_value, "endpoints": endpoints}, body)


def _not_met(key: str, result: TxnResult, conditions: dict[str, object]) -> str:
    """Why a conditional put did not write: the key as it is."""
    (name, wanted), = conditions.items()
    want = f"{name.replace('_', ' ')} {wanted}" if name != "value" else "the value given"
    if result.replayed or not result.responses:
        return f"{key} does not have {want}"
    kvs = result.responses[0]
    if not kvs:
        return f"{key} does not exist (wanted {want})"
    kv = kvs[0]  # type: ignore[index]
    return f"{key} has version {kv.version}, mod revision {kv.mod_revision} (wanted {want})"


@click.command("get")
@click.argument("key")
@click.option(
    "--serializable",
    is_flag=True,
    help="Read the answering node's own state without a quorum check (may be stale).",
)
@click.option(
    "--raw",
    is_flag=True,
    help="Write the value's bytes alone, without the newline (for binary values: > FILE).",
)
@click.option("--prefix", is_flag=True, help='Every key starting with KEY ("" for all): each key, then its value, on lines of their own.')
@click.option("--limit", type=click.IntRange(min=0), default=0, metavar="N", help="--prefix: at most N keys (0: all).")
@click.option("--keys-only", is_flag=True, help="--prefix: the keys alone.")
@click.option("--rev", type=click.IntRange(min=0), default=0, metavar="REV", help="Read as of revision REV (0: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the keys with their revisions as JSON.")
@_encoding
@_common
def get_cmd(
    key: str,
    serializable: bool,
    raw: bool,
    prefix: bool,
    limit: int,
    keys_only: bool,
    rev: int,
    as_json: bool,
    hex_: bool,
    b64: bool,
    endpoints: str,
    timeout_s: float,
    **tls: str | None,
) -> None:
    """Print the value of KEY, then a newline (exit 1 if it has none).

    --raw writes the value's bytes alone; --hex / --base64 take KEY so and
    print the value so. --prefix prints every key starting with KEY and its
    value; --rev reads an older revision; --json prints revisions too
    (create and mod revision, version) and the store's revision.
    """

    def body() -> None:
        mode = _mode(hex_, b64)
        if raw and (mode != "text" or prefix or as_json):
            raise _Usage("--raw writes one value's raw bytes: it excludes --hex, --base64, --prefix and --json")
        if (limit or keys_only) and not prefix:
            raise _Usage("--limit and --keys-only go with --prefix")
        key_b = _decode(key, mode, "KEY")
        if prefix or rev or as_json:
            _get_range(key_b, key, mode, prefix, limit, keys_only, rev, as_json, serializable, raw, endpoints, timeout_s, tls)
            return
        _validate(key_b)
        with _client(endpoints, timeout_s, tls) as c:
            try:
                value = c.get(key_b, serializable=serializable)
            except ClientError as exc:
                _fail("get", exc, c, write=False)
        if value is None:
            click.echo(f"paxoskv get: key not found: {key}", err=True)
            sys.exit(EXIT_NOT_FOUND)
        sys.stdout.flush()
        sys.stdout.buffer.write(_encode(value, mode) + (b"" if raw else b"\n"))
        sys.stdout.buffer.flush()

    _run_command("get", {"key": key, "endpoints": endpoints}, body)


def _get_range(
    key_b: bytes,
    key: str,
    mode: str,
    prefix: bool,
    limit: int,
    keys_only: bool,
    rev: int,
    as_json: bool,
    serializable: bool,
    raw: bool,
    endpoints: str,
    timeout_s: float,
    tls: dict[str, str | None],
) -> None:
    """``get --prefix`` / ``--rev`` / ``--json``: a Range."""
    if key_b or not prefix:
        _validate(key_b)
    with _client(endpoints, timeout_s, tls) as c:
        try:
            found = c.range(key_b, prefix=prefix, limit=limit, keys_only=keys_only, revision=rev, serializable=serializable)
        except ClientError as exc:
            _fail("get", exc, c, write=False)
    if as_json:
        click.echo(json.dumps(_range_json(found, mode), indent=2))
        return
    if not prefix:
        if not found.kvs:
            click.echo(f"paxoskv get: key not found: {key}", err=True)
            sys.exit(EXIT_NOT_FOUND)
        _write_lines([found.kvs[0].value], mode, raw)
        return
    lines: list[bytes] = []
    for kv in found.kvs:
        lines.append(kv.key)
        if not keys_only:
            lines.append(kv.value)
    _write_lines(lines, mode, False)


def _write_lines(lines: list[bytes], mode: str, raw: bool) -> None:
    sys.stdout.flush()
    out = sys.stdout.buffer
    for line in lines:
        out.write(_encode(line, mode) + (b"" if raw else b"\n"))
    out.flush()


def _json_bytes(data: bytes, mode: str) -> str:
    if mode != "text":
        return _encode(data, mode).decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Usage("a key or value is not UTF-8 text: print it with --hex or --base64") from None


def _kv_json(kv: KeyValue, mode: str) -> dict[str, object]:
    return {
        "key": _json_bytes(kv.key, mode),
        "value": _json_bytes(kv.value, mode),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }


def _range_json(found: RangeResult, mode: str) -> dict[str, object]:
    return {
        "revision": found.revision,
        "count": found.count,
        "more": found.more,
        "kvs": [_kv_json(kv, mode) for kv in found.kvs],
    }


# ---- txn ----------------------------------------------------------------------------

_COMPARE = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*(==|=|!=|<|>)\s*(.*?)\s*$", re.S)
_TARGETS = {
    "version": t.version,
    "mod": t.mod_revision,
    "mod_revision": t.mod_revision,
    "create": t.create_revision,
    "create_revision": t.create_revision,
    "value": t.value,
}


def _one_word(text: str, what: str, spec: str) -> str:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise _Usage(f"{spec!r}: {what}: {exc}") from None
    if len(words) != 1:
        raise _Usage(f"{spec!r}: {what} must be one word (quote it if it has spaces)")
    return words[0]


def parse_compare(spec: str, mode: str) -> t.Compare:
    """``version(KEY) = N`` and the like (module rules) as a Compare."""
    m = _COMPARE.match(spec)
    if m is None or m.group(1) not in _TARGETS:
        raise _Usage(
            f"--if {spec!r}: not a compare: write TARGET(KEY) OP VALUE with TARGET version, mod, create "
            f"or value and OP =, !=, < or >, e.g. 'version(k) = 0'"
        )
    name, key_text, op, operand_text = m.groups()
    key_b = _decode(_one_word(key_text, "KEY", spec), mode, "KEY")
    _validate(key_b)
    operand = _one_word(operand_text, "VALUE", spec)
    target = _TARGETS[name](key_b)
    if name == "value":
        value: object = _decode(operand, mode, "VALUE")
    else:
        try:
            value = int(operand)
        except ValueError:
            raise _Usage(f"--if {spec!r}: {name} is compared with a number, not {operand!r}") from None
        if value < 0:
            raise _Usage(f"--if {spec!r}: {name} is never negative")
    return {"==": target.__eq__, "=": target.__eq__, "!=": target.__ne__, "<": target.__lt__, ">": target.__gt__}[op](value)


def parse_op(spec: str, mode: str, option_name: str):  # noqa: ANN201 - an etcd RequestOp
    """``put KEY VALUE``, ``del KEY [--prefix]``, ``get KEY [--prefix]``."""
    try:
        words = shlex.split(spec)
    except ValueError as exc:
        raise _Usage(f"{option_name} {spec!r}: {exc}") from None
    prefix = "--prefix" in words[1:]
    args = [w for w in words[1:] if w != "--prefix"]
    verb = words[0] if words else ""
    if verb == "put" and len(args) == 2 and not prefix:
        key_b, value_b = _decode(args[0], mode, "KEY"), _decode(args[1], mode, "VALUE")
        _validate(key_b, value_b)
        return t.put(key_b, value_b)
    if verb in ("del", "delete", "get") and len(args) == 1:
        key_b = _decode(args[0], mode, "KEY")
        if key_b or not prefix:
            _validate(key_b)
        return (t.get if verb == "get" else t.delete)(key_b, prefix=prefix)
    raise _Usage(
        f"{option_name} {spec!r}: not an operation: write 'put KEY VALUE', 'del KEY' or 'get KEY' "
        f"(del and get take --prefix)"
    )


@click.command("txn")
@click.option("--if", "compares", multiple=True, metavar="COMPARE", help="A condition, e.g. 'version(k) = 0', 'mod(k) < 9', 'value(k) != old' (repeat: all must hold).")
@click.option("--then", "success", multiple=True, metavar="OP", help="Run if every condition holds: 'put KEY VALUE', 'del KEY', 'get KEY' (repeatable).")
@click.option("--else", "failure", multiple=True, metavar="OP", help="Run otherwise (repeatable).")
@_encoding
@_common
def txn_cmd(
    compares: tuple[str, ...],
    success: tuple[str, ...],
    failure: tuple[str, ...],
    hex_: bool,
    b64: bool,
    endpoints: str,
    timeout_s: float,
    **tls: str | None,
) -> None:
    """A transaction: if every --if holds, the --then ops, else the --else ops, at one revision.

    Prints SUCCESS or FAILURE (which branch ran; both exit 0), then each
    op's answer: put OK, del the number of keys deleted, get each key and
    its value on lines of their own. Applied exactly once.
    """

    def body() -> None:
        mode = _mode(hex_, b64)
        if not (compares or success or failure):
            raise _Usage("give --if, --then and --else (e.g. --if 'version(k) = 0' --then 'put k v')")
        txn = t.Txn().when(*(parse_compare(c, mode) for c in compares))
        txn.then(*(parse_op(o, mode, "--then") for o in success))
        txn.otherwise(*(parse_op(o, mode, "--else") for o in failure))
        with _client(endpoints, timeout_s, tls) as c:
            try:
                result = c.txn(txn)
            except ClientError as exc:
                _fail("txn", exc, c, write=True)
        lines = [b"SUCCESS" if result.succeeded else b"FAILURE"]
        for answer in result.responses:
            if answer is None:
                lines.append(b"OK")
            elif isinstance(answer, int):
                lines.append(str(answer).encode())
            else:
                for kv in answer:
                    lines += [_encode(kv.key, mode), _encode(kv.value, mode)]
        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(line + b"\n" for line in lines))
        sys.stdout.buffer.flush()
        if result.replayed:
            click.echo("paxoskv txn: a retry found the transaction applied already: its answers are not repeated", err=True)

    params = {"if": compares, "then": success, "else": failure, "endpoints": endpoints}
    _run_command("txn", {k: " ".join(v) if isinstance(v, tuple) else v for k, v in params.items()}, body)


@click.command("delete")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help='Print {"deleted": B, "revision": R} instead of 1 or 0.')
@_encoding
@_common
def delete_cmd(key: str, as_json: bool, hex_: bool, b64: bool, endpoints: str, timeout_s: float, **tls: str | None) -> None:
    """Delete KEY (prints 1 if it existed, 0 if not); --hex / --base64 take KEY so;
    --json prints {"deleted": B, "revision": R} (R: the delete's revision, or
    the store's when there was nothing to delete)."""

    def body() -> None:
        key_b = _decode(key, _mode(hex_, b64), "KEY")
        _validate(key_b)
        with _client(endpoints, timeout_s, tls) as c:
            try:
                result = c.delete(key_b)
            except ClientError as exc:
                _fail("delete", exc, c, write=True)
        if as_json:
            click.echo(json.dumps({"deleted": result.existed, "revision": result.revision}))
            return
        click.echo("1" if result.existed else "0")

    _run_command("delete", {"key": key, "endpoints": endpoints}, body)


def _status_json(ns: NodeStatus) -> dict[str, Any]:
    if ns.status is None:
        return {"endpoint": ns.endpoint, "error": str(ns.error)}
    s = ns.status
    return {
        "endpoint": ns.endpoint,
        "node_id": s.node_id,
        "cluster_id": s.cluster_id,
        "role": s.role,
        "leader_id": s.leader_id,
        "ballot": {"round": s.ballot_round, "node": s.ballot_node},
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "log_start": s.log_start,
        "snapshot_index": s.snapshot_index,
        "keys": s.keys,
        "version": s.version,
        "counters": dict(sorted(s.counters.items())),
        "peers": [
            {
                "node_id": p.node_id,
                "address": p.address,
                "connected": p.connected,
                "last_heard_seconds": p.last_heard_seconds if p.HasField("last_heard_seconds") else None,
            }
            for p in s.peers
        ],
    }


_COLUMNS = (
    "ENDPOINT", "ID", "ROLE", "LEADER", "BALLOT", "COMMIT", "APPLIED", "LOG", "SNAPSHOT", "PEERS SEEN"
)


def _status_row(ns: NodeStatus) -> tuple[str, ...]:
    if ns.status is None:
        return (ns.endpoint, "-", f"unreachable: {ns.error}")
    s = ns.status
    seen = ",".join(str(p.node_id) for p in s.peers if p.connected) or "-"
    return (
        ns.endpoint,
        str(s.node_id),
        s.role,
        str(s.leader_id) if s.leader_id else "-",
        f"{s.ballot_round}.{s.ballot_node}",
        str(s.commit_index),
        str(s.applied_index),
        f"{s.log_start}-{s.commit_index}" if s.commit_index >= s.log_start else "-",
        str(s.snapshot_index) if s.snapshot_index else "-",
        seen,
    )


def format_status_table(nodes: list[NodeStatus]) -> str:
    rows = [_COLUMNS, *(_status_row(ns) for ns in nodes)]
    full = [r for r in rows if len(r) == len(_COLUMNS)]
    widths = [max(len(r[i]) for r in full) for i in range(len(_COLUMNS))]
    lines = []
    for r in rows:
        if len(r) == len(_COLUMNS):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        else:  # an unreachable node: endpoint, then the error
            lines.append("  ".join((r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2])))
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per endpoint.")
@_common
def status_cmd(as_json: bool, endpoints: str, timeout_s: float, **tls: str | None) -> None:
    """Show each endpoint's node: role, leader, ballot, commit/applied index, peers seen.

    Exit 0 when every endpoint answered, 3 otherwise.
    """
    nodes: list[NodeStatus] = []

    def body() -> None:
        eps = _endpoints(endpoints)
        with SyncClient(eps, timeout_s=timeout_s, tls=_tls(**tls)) as c:
            nodes.extend(c.status_all(eps))

    _run_command("status", {"endpoints": endpoints}, body)
    if as_json:
        click.echo(json.dumps([_status_json(ns) for ns in nodes], indent=2))
    else:
        click.echo(format_status_table(nodes))
    if any(ns.status is None for ns in nodes):
        sys.exit(EXIT_UNAVAILABLE)
