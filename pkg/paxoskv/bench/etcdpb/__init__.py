"""Generated code of a minimal subset of etcd's v3 KV API (``etcdserverpb.KV``:
Range and Put), from ``bench/proto/paxoskv/bench/etcdpb/etcd_rpc.proto``.
Do not edit; regenerate with ``bench/gen-proto``."""
