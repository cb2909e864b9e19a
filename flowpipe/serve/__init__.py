"""Serve: the Hubble Observer API over stored history (`flowpipe serve`, `flowpipe replay`).

server: the gRPC service and paging over the store; filters: FlowFilter lists -> SQL with Hubble's
semantics; replay: jsonpb files served as a fake Relay.
"""
