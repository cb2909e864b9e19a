"""The Flow schema and its representations: protobuf wire <-> Arrow columns <-> Flow, and hubble's text.

spec: protobuf descriptors -> Arrow types (the only walker of descriptors); decode: wire bytes ->
columns (_wire.c); storage: the stored form and lossless Flow reconstruction; hubble: compact and
jsonpb lines exactly as `hubble observe` prints them.
"""
