"""Kubernetes label selectors with Cilium's source prefixes (k8s:app=x), as hubble's label filters take them.

The grammar of k8s.io/apimachinery labels.Parse (=, ==, !=, in, notin, exists, !key); Cilium adds
a source prefix to keys (k8s:, reserved:, any:). The numeric '<' and '>' are not implemented: refused."""

from __future__ import annotations

import re

from flowpipe.errors import FilterError

Requirement = tuple[str, str, str, list[str]]  # (op, source, key, values)

_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SPECIAL = "=!(),<>"


def _check_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise FilterError(f"invalid label key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise FilterError(
            f"invalid label key {key!r}: name must be 63 characters of [-A-Za-z0-9_.]"
        )


def _check_value(value: str) -> None:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise FilterError(f"invalid label value {value!r}: must be 63 characters of [-A-Za-z0-9_.]")


def _tokens(text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith(("==", "!="), i):
            out.append(text[i : i + 2])
            i += 2
        elif ch in _SPECIAL:
            out.append(ch)
            i += 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in _SPECIAL:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def parse_selector(text: str) -> list[Requirement]:
    """A k8s label selector with Cilium source prefixes -> [(op, source, key, values)]."""
    toks = _tokens(text)
    reqs, i = [], 0

    def ident(pos: int) -> str:
        if pos >= len(toks) or toks[pos] in _SPECIAL or toks[pos] in ("==", "!="):
            raise FilterError(f"invalid label selector {text!r}: expected a key or value")
        return toks[pos]

    while i < len(toks):
        neg = toks[i] == "!"
        if neg:
            i += 1
        raw_key = ident(i)
        i += 1
        src, _, key = raw_key.partition(":") if ":" in raw_key else ("any", "", raw_key)
        _check_key(f"{src}.{key}")
        if src == "cidr":
            raise FilterError(f"label selector {text!r}: cidr: label prefixes are not supported")
        op, values = ("!" if neg else "exists"), []
        nxt = toks[i] if i < len(toks) else ","
        if not neg and nxt in ("=", "==", "!="):
            op = "!=" if nxt == "!=" else "="
            i += 1
            if i < len(toks) and toks[i] != ",":
                values = [ident(i)]
                i += 1
            else:
                values = [""]
        elif not neg and nxt in ("in", "notin"):
            op = nxt
            i += 1
            if i >= len(toks) or toks[i] != "(":
                raise FilterError(f"invalid label selector {text!r}: expected '(' after {nxt}")
            i += 1
            values, expect_value = [], True
            while i < len(toks) and toks[i] != ")":
                if toks[i] == ",":
                    if expect_value:
                        values.append("")
                    expect_value = True
                else:
                    values.append(ident(i))
                    expect_value = False
                i += 1
            if i >= len(toks):
                raise FilterError(f"invalid label selector {text!r}: missing ')'")
            if expect_value:
                values.append("")
            i += 1
        elif nxt in ("<", ">"):
            raise FilterError(f"label selector {text!r}: '<' and '>' are not supported")
        for v in values:
            _check_value(v)
        reqs.append((op, src, key, values))
        if i < len(toks):
            if toks[i] != ",":
                raise FilterError(f"invalid label selector {text!r}: unexpected {toks[i]!r}")
            i += 1
            if i >= len(toks):
                raise FilterError(f"invalid label selector {text!r}: trailing ','")
    return reqs
