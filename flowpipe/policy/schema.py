"""The structural schema of the CiliumNetworkPolicy fields `policy suggest` writes, and a validator.

The types, enums, patterns and limits are those of the CRD's openAPIV3Schema
(pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml); metadata follows Kubernetes
object names. Unknown fields are refused (the API server would drop them silently).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from flowpipe.policy.selectors import ENTITIES

PORT = r"^(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})$"
DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_KEY = r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _str(pattern: str | None = None, max_length: int | None = None, fmt: str = "") -> dict:
    out: dict[str, Any] = {"type": "string"}
    if pattern:
        out["pattern"] = pattern
    if max_length:
        out["maxLength"] = max_length
    if fmt:
        out["format"] = fmt
    return out


def _obj(props: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required)}


def _arr(items: dict, max_items: int | None = None) -> dict:
    out: dict[str, Any] = {"type": "array", "items": items}
    if max_items:
        out["maxItems"] = max_items
    return out


def _map(values: dict, key_pattern: str) -> dict:
    return {"type": "object", "additionalProperties": values, "keyPattern": key_pattern}


SELECTOR = _obj(
    {
        "matchLabels": _map(_str(LABEL_VALUE, 63), LABEL_KEY),
        "matchExpressions": _arr(
            _obj(
                {
                    "key": _str(),
                    "operator": {
                        "type": "string",
                        "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                    },
                    "values": _arr(_str()),
                },
                ("key", "operator"),
            )
        ),
    }
)
FQDN_SELECTOR = _obj(
    {
        "matchName": _str(r"^([-a-zA-Z0-9_]+[.]?)+$", 255),
        "matchPattern": _str(r"^([-a-zA-Z0-9_*]+[.]?)+$", 255),
    }
)
PORT_PROTOCOL = _obj(
    {
        "port": _str(PORT),
        "endPort": {"type": "integer", "minimum": 0, "maximum": 65535},
        "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP", "ANY"]},
    },
    ("port",),
)
HTTP = _obj({"method": _str(), "path": _str(), "host": _str(), "headers": _arr(_str())})
PORT_RULE = _obj(
    {
        "ports": _arr(PORT_PROTOCOL, 40),
        "rules": _obj({"http": _arr(HTTP), "dns": _arr(FQDN_SELECTOR)}),
    }
)
CIDR = _str(fmt="cidr")
INGRESS_RULE = _obj(
    {
        "fromEndpoints": _arr(SELECTOR),
        "fromEntities": _arr({"type": "string", "enum": sorted(ENTITIES)}),
        "fromCIDR": _arr(CIDR),
        "toPorts": _arr(PORT_RULE),
    }
)
EGRESS_RULE = _obj(
    {
        "toEndpoints": _arr(SELECTOR),
        "toEntities": _arr({"type": "string", "enum": sorted(ENTITIES)}),
        "toCIDR": _arr(CIDR),
        "toFQDNs": _arr(FQDN_SELECTOR),
        "toPorts": _arr(PORT_RULE),
    }
)
CNP = _obj(
    {
        "apiVersion": {"type": "string", "enum": ["cilium.io/v2"]},
        "kind": {"type": "string", "enum": ["CiliumNetworkPolicy"]},
        "metadata": _obj(
            {
                "name": _str(DNS_1123_SUBDOMAIN, 253),
                "namespace": _str(DNS_1123_LABEL, 63),
                "labels": _map(_str(LABEL_VALUE, 63), LABEL_KEY),
            },
            ("name", "namespace"),
        ),
        "spec": _obj(
            {
                "description": _str(),
                "endpointSelector": SELECTOR,
                "ingress": _arr(INGRESS_RULE),
                "egress": _arr(EGRESS_RULE),
            },
            ("endpointSelector",),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
}


def validate(value: Any, schema: dict = CNP, path: str = "") -> list[str]:
    """Every way value breaks schema, as 'path: problem' (empty when it conforms)."""
    where = path or "(root)"
    kind = schema["type"]
    if not isinstance(value, _TYPES[kind]) or (kind == "integer" and isinstance(value, bool)):
        return [f"{where}: must be of type {kind}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {', '.join(map(str, schema['enum']))}")
    if kind == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "cidr":
            try:
                ipaddress.ip_network(value, strict=True)
            except ValueError:
                errors.append(f"{where}: {value!r} is not a CIDR")
    elif kind == "integer":
        if not schema.get("minimum", value) <= value <= schema.get("maximum", value):
            errors.append(f"{where}: {value} is out of range")
    elif kind == "array":
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    elif "properties" in schema:
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{where}: {key} is required")
        for key, item in value.items():
            sub = schema["properties"].get(key)
            if sub is None:
                errors.append(f"{where}: unknown field {key}")
            else:
                errors += validate(item, sub, f"{path}.{key}" if path else key)
    else:  # a map
        for key, item in value.items():
            if not isinstance(key, str) or not re.search(schema["keyPattern"], key):
                errors.append(f"{where}: invalid key {key!r}")
            errors += validate(item, schema["additionalProperties"], f"{path}.{key}")
    return errors
