"""Protocols paxoskv serves beside its own: gRPC server reflection v1 (``v1``)."""
