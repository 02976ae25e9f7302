#!/usr/bin/env python3
"""Make the CURVE key pairs of the peer bus on the control machine, once.

What `paxoskv keys --dir DIR --id N ...` does, run with the source tree the
nodes are built from (so this machine needs only pyzmq, not an installed
paxoskv): for every id, node<ID>.key (public) and node<ID>.key_secret (0600)
are made unless they exist; an existing pair is checked and kept. Prints
one JSON line: {"changed": bool, "made": [ids made now]} for Ansible.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="the paxoskv source tree")
    parser.add_argument("--dir", required=True, help="where the key files are kept")
    parser.add_argument("--id", type=int, action="append", required=True, help="a node id (repeatable)")
    args = parser.parse_args()
    # keys.py alone (it needs only pyzmq), not the paxoskv package around it.
    path = pathlib.Path(args.source) / "pkg" / "paxoskv" / "transport" / "keys.py"
    spec = importlib.util.spec_from_file_location("paxoskv_bus_keys", path)
    assert spec is not None and spec.loader is not None, path
    keys = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = keys  # dataclasses look their module up
    spec.loader.exec_module(keys)
    try:
        made = keys.ensure_key_pairs(args.dir, sorted(set(args.id)))
    except keys.KeyFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps({"changed": any(made.values()), "made": sorted(i for i, now in made.items() if now)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
