# Generated from proto/ by `make protos` (flowpipe.protogen). Do not edit.
