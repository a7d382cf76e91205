"""The wire schema (``clicooper.proto``) and the protobuf / gRPC code generated from it (checked in).

Regenerate with ``src/clicooper/net/proto/gen_proto.sh`` after changing the ``.proto``; nothing else here
is edited by hand.
"""
