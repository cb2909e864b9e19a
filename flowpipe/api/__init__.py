# Generated from proto/ by `make protos` (flowpipe.protogen). Do not edit.
"""Generated Hubble API v1 protobuf modules."""
