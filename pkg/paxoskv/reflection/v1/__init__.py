"""Generated code of gRPC server reflection v1 (``grpc.reflection.v1``), from
``proto/paxoskv/reflection/v1/``. Do not edit; regenerate with ``bin/gen-proto``."""
