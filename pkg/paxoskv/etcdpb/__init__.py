"""Generated code of etcd's v3 API (3.4): ``rpc_pb2`` (package ``etcdserverpb``:
KV, Watch, Lease, Cluster, Maintenance, Auth), ``kv_pb2`` (``mvccpb``) and
``auth_pb2`` (``authpb``), from ``proto/paxoskv/etcdpb/``.
Do not edit; regenerate with ``bin/gen-proto``."""
