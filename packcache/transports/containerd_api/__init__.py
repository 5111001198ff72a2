"""containerd's v1 gRPC wire definitions, only the messages and services packcache calls.

The ``*_pb2.py`` / ``*_pb2_grpc.py`` modules are generated from the ``.proto`` files here by
``tests/generate_containerd_api.py`` (run by ``make``) and not committed.
"""
