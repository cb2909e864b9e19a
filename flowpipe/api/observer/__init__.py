# Generated from proto/ by `make protos` (tools/protogen.py). Do not edit.
