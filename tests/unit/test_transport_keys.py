"""CURVE key files of the peer bus, ``paxoskv keys``, and how ``serve`` refuses
to start without keys or with bad ones (one line, exit 2)."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from paxoskv.server.cli import serve_cmd
from paxoskv.server.config import ConfigError, StartRefused, build_serve_options
from paxoskv.server.keys_cli import keys_cmd
from paxoskv.transport.keys import (
    KeyFileError,
    create_key_pair,
    ensure_key_pairs,
    load_bus_keys,
    public_key_path,
    secret_key_path,
)


def test_a_pair_is_made_once_secret_0600_and_readable_by_zmq_auth(tmp_path) -> None:
    d = tmp_path / "keys"
    pub, sec, made = create_key_pair(d, 2)
    assert made and (pub, sec) == (d / "node2.key", d / "node2.key_secret")
    assert sec.stat().st_mode & 0o777 == 0o600 and pub.stat().st_mode & 0o777 == 0o644
    assert d.stat().st_mode & 0o777 == 0o700
    public, secret = zmq.auth.load_certificate(sec)
    assert zmq.curve_public(secret) == public and zmq.auth.load_certificate(pub) == (public, None)
    before = sec.read_bytes()
    assert create_key_pair(d, 2)[2] is False and sec.read_bytes() == before  # kept, not replaced
    assert sorted(os.listdir(d)) == ["node2.key", "node2.key_secret"]  # no temporary left behind
    assert ensure_key_pairs(d, [1, 2, 3]) == {1: True, 2: False, 3: True}


def test_a_half_pair_is_not_papered_over(tmp_path) -> None:
    d = tmp_path / "k"
    create_key_pair(d, 1)
    secret_key_path(d, 1).unlink()
    with pytest.raises(KeyFileError, match="node1.key exists but .*node1.key_secret does not"):
        create_key_pair(d, 1)


def test_loading_checks_what_a_start_needs(tmp_path) -> None:
    d = tmp_path / "keys"
    ensure_key_pairs(d, [1, 2, 3])
    keys = load_bus_keys(1, [2, 3], d)
    assert sorted(keys.members) == [1, 2, 3] and keys.members[1] == keys.public
    assert keys.secret.decode() not in repr(keys)

    def refused(match: str, *, ids=(2, 3), directory=d, secret=None) -> None:
        with pytest.raises(KeyFileError, match=match) as ei:
            load_bus_keys(1, ids, directory, secret)
        assert "\n" not in str(ei.value)

    refused("directory .*nope does not exist", directory=tmp_path / "nope")
    refused("no public key of node 4 in .*expected node4.key", ids=(2, 3, 4))
    refused("secret key file .*missing.key_secret does not exist", secret=tmp_path / "missing.key_secret")
    refused("no secret key in it", secret=public_key_path(d, 2))  # a public key given as the secret
    refused("is not the public key of", secret=secret_key_path(d, 2))  # node 2's secret for node 1

    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(64))
    refused("is not a key file", secret=junk)
    (tmp_path / "dir.key_secret").mkdir()
    refused("is a directory", secret=tmp_path / "dir.key_secret")
    bad = tmp_path / "bad"
    bad.write_text('curve\n    public-key = "tooshort"\n    secret-key = "tooshort"\n')
    refused("is not a CURVE key", secret=bad)
    mismatched = tmp_path / "mismatched"
    (pub_a, _), (_, sec_b) = zmq.curve_keypair(), zmq.curve_keypair()
    mismatched.write_text(f'curve\n    public-key = "{pub_a.decode()}"\n    secret-key = "{sec_b.decode()}"\n')
    refused("its public key is not the one of its secret key", secret=mismatched)

    shutil.copy(public_key_path(d, 2), public_key_path(d, 3))  # two members, one key
    refused("node3.key is the same key as node2.key")


def test_serve_needs_keys_or_says_insecure_and_loads_them(tmp_path) -> None:
    base = dict(node_id=1, cluster_id="c", listen="127.0.0.1", port=7001, bus_port=None,
                peers="2=127.0.0.1:7002", data_dir=str(tmp_path / "d"), heartbeat_ms=50, election_ms=500)
    with pytest.raises(StartRefused) as ei:
        build_serve_options(**base)
    assert "--insecure-peer-bus" in str(ei.value) and "paxoskv keys" in str(ei.value)
    assert build_serve_options(**base, insecure_peer_bus=True).node.bus_keys is None
    with pytest.raises(ConfigError, match="excludes"):
        build_serve_options(**base, insecure_peer_bus=True, peer_public_keys=str(tmp_path))
    with pytest.raises(ConfigError, match="needs --peer-public-keys"):
        build_serve_options(**base, peer_secret_key=str(tmp_path / "x"))
    ensure_key_pairs(tmp_path / "keys", [1])
    with pytest.raises(StartRefused, match="no public key of node 2"):
        build_serve_options(**base, peer_public_keys=str(tmp_path / "keys"))
    ensure_key_pairs(tmp_path / "keys", [2])
    keys = build_serve_options(**base, peer_public_keys=str(tmp_path / "keys")).node.bus_keys
    assert keys is not None and sorted(keys.members) == [1, 2]
    # A secret kept elsewhere (as a deploy does: only its own secret on each node).
    elsewhere = tmp_path / "secret" / "mine"
    elsewhere.parent.mkdir()
    shutil.move(secret_key_path(tmp_path / "keys", 1), elsewhere)
    keys2 = build_serve_options(**base, peer_public_keys=str(tmp_path / "keys"), peer_secret_key=str(elsewhere))
    assert keys2.node.bus_keys == keys


def test_serve_without_keys_exits_2_with_one_line(tmp_path) -> None:
    r = CliRunner().invoke(serve_cmd, ["--id", "1", "--data-dir", str(tmp_path / "d")], env={
        "PAXOSKV_PEER_PUBLIC_KEYS": None, "PAXOSKV_INSECURE_PEER_BUS": None, "PAXOSKV_PEERS": None})
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("paxoskv serve: error: the peer bus needs CURVE keys") and "--insecure-peer-bus" in line
    assert not (tmp_path / "d").exists()
    r = CliRunner().invoke(serve_cmd, ["--id", "1", "--peer-public-keys", str(tmp_path / "none")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr


def test_keys_command(tmp_path) -> None:
    runner = CliRunner()
    d = tmp_path / "k"
    r = runner.invoke(keys_cmd, ["--dir", str(d), "--nodes", "3"])
    assert r.exit_code == 0, r.output
    assert r.output.count(": made ") == 3 and "--peer-public-keys" in r.output
    r = runner.invoke(keys_cmd, ["--dir", str(d), "--id", "3", "--id", "5"])
    assert r.exit_code == 0 and "node3: kept" in r.output and "node5: made" in r.output
    assert len(list(pathlib.Path(d).glob("*.key_secret"))) == 4
    assert runner.invoke(keys_cmd, ["--dir", str(d)]).exit_code == 2  # which nodes?
    assert runner.invoke(keys_cmd, ["--dir", str(d), "--nodes", "0"]).exit_code == 2
    secret_key_path(d, 5).write_text("garbage")
    r = runner.invoke(keys_cmd, ["--dir", str(d), "--id", "5"])
    assert r.exit_code == 2 and r.stderr.startswith("paxoskv keys: error: ")
