"""CURVE key pairs of the peer bus: creating, loading and checking key files.

Rules
-----
* A member's key pair is two files in the certificate format of pyzmq's
  ``zmq.auth`` (czmq's: ZPL text, keys in Z85), named by member id:
  ``node<ID>.key`` holds the public key (shareable) and ``node<ID>.key_secret``
  both keys (secret: mode 0600). ``zmq.auth.load_certificate`` reads either.
* A node is given its own secret file and a directory of public keys with a
  ``node<ID>.key`` for every member, itself included; nothing else in that
  directory is read. Its bus admits exactly those keys.
* ``load_bus_keys`` checks everything a start needs and raises
  :class:`KeyFileError` (one line naming the file) for: a file missing or
  unreadable, not a certificate, a key that is not 32 bytes in Z85, a secret
  file without its secret key, a public key that is not the secret's own, a
  member's public key missing, two members with the same key.
* ``create_key_pair`` never overwrites: an existing pair is checked and kept,
  so running it again is harmless. The secret file is created 0600 under a
  temporary name and renamed into place: it is never readable by others,
  nor seen half-written.
"""

from __future__ import annotations

import datetime
import logging
import os
import pathlib
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = [
    "BusKeys",
    "KeyFileError",
    "create_key_pair",
    "ensure_key_pairs",
    "local_bus_args",
    "load_bus_keys",
    "public_key_path",
    "secret_key_path",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32


class KeyFileError(ValueError):
    """A key file is missing or wrong; ``str(err)`` is one line for a person."""


@dataclass(frozen=True, slots=True)
class BusKeys:
    """What a bus needs for CURVE: its own key pair and every member's public key (Z85)."""

    node_id: int
    public: bytes
    secret: bytes = field(repr=False)
    members: dict[int, bytes]  # member id -> public key, this node included

    def __post_init__(self) -> None:
        if self.members.get(self.node_id) != self.public:
            raise ValueError(f"node {self.node_id}'s public key must be among the members' keys")
        if len(set(self.members.values())) != len(self.members):
            raise ValueError("two members share a public key")


def public_key_path(directory: os.PathLike | str, node_id: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"node{node_id}.key"


def secret_key_path(directory: os.PathLike | str, node_id: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"node{node_id}.key_secret"


def _z85_key(text: bytes | None, path: pathlib.Path, what: str) -> bytes:
    if not text:
        hint = " (node<ID>.key holds the public key only; the secret is in node<ID>.key_secret)" if "secret" in what else ""
        raise KeyFileError(f"{path}: no {what} in it{hint}")
    try:
        raw = z85.decode(text)
    except Exception:  # noqa: BLE001 - z85 raises several kinds on garbage
        raw = b""
    if len(raw) != KEY_BYTES:
        raise KeyFileError(f"{path}: its {what} is not a CURVE key ({KEY_BYTES} bytes in Z85)")
    return text


def _read_certificate(path: pathlib.Path, what: str) -> tuple[bytes | None, bytes | None]:
    if not path.exists():
        raise KeyFileError(f"{what} {path} does not exist")
    try:
        return zmq.auth.load_certificate(path)
    except PermissionError:
        raise KeyFileError(f"{what} {path} is not readable by this user") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {path} is a directory, not a key file") from None
    except ValueError:
        raise KeyFileError(f"{what} {path} is not a key file (no public-key line)") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def load_secret(path: os.PathLike | str) -> tuple[bytes, bytes]:
    """(public, secret) of a secret key file, checked to belong together."""
    p = pathlib.Path(path)
    public, secret = _read_certificate(p, "secret key file")
    public = _z85_key(public, p, "public key")
    secret = _z85_key(secret, p, "secret key")
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{p}: its public key is not the one of its secret key")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret key file %s is readable by others (mode %o): chmod 600 it", p, stat.S_IMODE(mode))
    return public, secret


def load_public(path: os.PathLike | str) -> bytes:
    p = pathlib.Path(path)
    public, _ = _read_certificate(p, "public key file")
    return _z85_key(public, p, "public key")


def load_bus_keys(
    node_id: int,
    member_ids: Iterable[int],
    public_dir: os.PathLike | str,
    secret_file: os.PathLike | str | None = None,
) -> BusKeys:
    """The keys of node ``node_id``: its secret (``secret_file``, default
    ``node<ID>.key_secret`` in ``public_dir``) and ``node<ID>.key`` of every
    member in ``public_dir``. Raises :class:`KeyFileError`."""
    directory = pathlib.Path(public_dir)
    if not directory.is_dir():
        raise KeyFileError(f"public key directory {directory} does not exist or is not a directory")
    secret_path = pathlib.Path(secret_file) if secret_file else secret_key_path(directory, node_id)
    public, secret = load_secret(secret_path)
    members: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for member in sorted({node_id, *member_ids}):
        path = public_key_path(directory, member)
        if not path.exists():
            raise KeyFileError(
                f"no public key of node {member} in {directory} (expected {path.name}): "
                f"copy it there, or make keys with `paxoskv keys`"
            )
        key = load_public(path)
        if key in seen:
            raise KeyFileError(f"{path} is the same key as node{seen[key]}.key: every member needs its own")
        seen[key] = member
        members[member] = key
    if members[node_id] != public:
        raise KeyFileError(
            f"{public_key_path(directory, node_id)} is not the public key of {secret_path}: "
            f"this node's own public key must match its secret"
        )
    return BusKeys(node_id=node_id, public=public, secret=secret, members=members)


_BANNER = (
    "#   ZeroMQ CURVE {kind} key of paxoskv node {node_id}, made {when}\n"
    "#   (the certificate format of zmq.auth; `paxoskv keys` made it)\n"
)


def _cert_text(node_id: int, kind: str, public: bytes, secret: bytes | None) -> str:
    lines = [
        _BANNER.format(kind=kind, node_id=node_id, when=datetime.datetime.now().isoformat(timespec="seconds")),
        "metadata\n",
        f'    node-id = "{node_id}"\n',
        "curve\n",
        f'    public-key = "{public.decode()}"\n',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"\n')
    return "".join(lines)


def _write_new(path: pathlib.Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_key_pair(directory: os.PathLike | str, node_id: int) -> tuple[pathlib.Path, pathlib.Path, bool]:
    """Make ``node<ID>.key`` and ``node<ID>.key_secret`` in ``directory``
    unless they exist; return both paths and whether they were made now.
    An existing pair is checked (:class:`KeyFileError` if it is broken or
    half there)."""
    d = pathlib.Path(directory)
    pub, sec = public_key_path(d, node_id), secret_key_path(d, node_id)
    if pub.exists() or sec.exists():
        if not (pub.exists() and sec.exists()):
            have, missing = (pub, sec) if pub.exists() else (sec, pub)
            raise KeyFileError(f"{have} exists but {missing} does not: restore it, or remove {have} to make a new pair")
        public, _ = load_secret(sec)
        if load_public(pub) != public:
            raise KeyFileError(f"{pub} is not the public key of {sec}")
        return pub, sec, False
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    _write_new(sec, _cert_text(node_id, "secret", public, secret), 0o600)
    _write_new(pub, _cert_text(node_id, "public", public, None), 0o644)
    return pub, sec, True


def ensure_key_pairs(directory: os.PathLike | str, node_ids: Iterable[int]) -> dict[int, bool]:
    """``create_key_pair`` for each node; per node, whether its pair was made now."""
    return {node_id: create_key_pair(directory, node_id)[2] for node_id in node_ids}


def local_bus_args(directory: os.PathLike | str, node_ids: Iterable[int], *, curve: bool = True) -> list[str]:
    """The ``paxoskv serve`` flags of a local cluster's bus: with ``curve``, the
    key pairs of ``node_ids`` are made (or kept) in ``directory`` and the flags
    point at them; without, the flag of the insecure bus."""
    if not curve:
        return ["--insecure-peer-bus"]
    ensure_key_pairs(directory, node_ids)
    return ["--peer-public-keys", str(directory)]
