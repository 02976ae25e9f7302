#!/usr/bin/env bash
# The original Go version's run_cluster.sh: set up what running needs (bin/setup
# run: the virtualenv with paxoskv and its dependencies, nothing for tests),
# then run three local nodes in the foreground until Ctrl-C.
#   node 1: gRPC 127.0.0.1:50051, bus 51051, data ./data/node1
#   node 2: gRPC 127.0.0.1:50052, bus 51052, data ./data/node2
#   node 3: gRPC 127.0.0.1:50053, bus 51053, data ./data/node3
# Logs are prefixed [node1] .. [node3]; a banner says how to talk to them.
# PAXOSKV_BASE_PORT and PAXOSKV_CLUSTER_DATA_DIR move the ports and the data.
# Exit codes are `paxoskv cluster`'s: 2 when it cannot start (a port in use,
# the data directory in use), 1 when a node died unexpectedly.
set -euo pipefail
cd "$(dirname "$0")/.."
bin/setup run
echo "run_cluster: starting 3 nodes (paxoskv cluster)" >&2
exec .venv/bin/paxoskv cluster --nodes 3 \
  --base-port "${PAXOSKV_BASE_PORT:-50051}" \
  --data-dir "${PAXOSKV_CLUSTER_DATA_DIR:-./data}"
