#!/usr/bin/env bash
# The original Go version's run_cluster.sh: set everything up, then run three
# local nodes in the foreground until Ctrl-C.
#   node 1: gRPC 127.0.0.1:50051, bus 51051, data ./data/node1
#   node 2: gRPC 127.0.0.1:50052, bus 51052, data ./data/node2
#   node 3: gRPC 127.0.0.1:50053, bus 51053, data ./data/node3
# Logs are prefixed [node1] .. [node3]; a banner says how to talk to them.
# PAXOSKV_BASE_PORT and PAXOSKV_CLUSTER_DATA_DIR move the ports and the data.
set -euo pipefail
cd "$(dirname "$0")/.."
bin/setup
exec .venv/bin/paxoskv cluster --nodes 3 \
  --base-port "${PAXOSKV_BASE_PORT:-50051}" \
  --data-dir "${PAXOSKV_CLUSTER_DATA_DIR:-./data}"
