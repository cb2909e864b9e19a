# Generated from proto/ by `make protos` (tools/protogen.py). Do not edit.
"""Generated Hubble API v1 protobuf modules."""
