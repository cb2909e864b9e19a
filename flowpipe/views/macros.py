"""Every SQL macro of the views: rule helpers, and the fp_* helpers FlowFilters compile to.

views.catalog defines them on every connection (rules, `flowpipe query`, the .duckdb file, serve).
The fp_* macros follow Go: Cilium's label parsing, net.ParseIP and url.ParseRequestURI, so that
serve's filters match what Hubble's would."""

from __future__ import annotations

from flowpipe.common.sql import quote

# Rule helpers, one definition each, used by rules, `flowpipe query` and the .duckdb file.
RULE_MACROS = {
    # 'app=frontend' (or 'any:app=frontend') matches 'k8s:app=frontend'; 'k8s:app=frontend' matches exactly
    "has_label": (
        "(labels, sel)",
        "len(list_filter(labels, lambda l: l = sel OR (strpos(l, ':') > 0 "
        "AND substr(l, strpos(l, ':') + 1) = "
        "(CASE WHEN starts_with(sel, 'any:') THEN substr(sel, 5) ELSE sel END)))) > 0",
    ),
    "allowed_by": ("(policies, name)", "list_contains(policies, name)"),
    "denied_by": ("(policies, name)", "list_contains(policies, name)"),
    "http_status_class": (
        "(code)",
        "CASE WHEN code IS NULL THEN NULL ELSE (code // 100) || 'xx' END",
    ),
    "is_world": ("(labels)", "list_contains(labels, 'reserved:world')"),
    # every flag in wanted is set, like `hubble observe --tcp-flags SYN,ACK`
    "has_tcp_flags": ("(flags, wanted)", "list_has_all(flags, wanted)"),
    # a flow between a pod labelled a and one labelled b, either way round (requests and replies)
    "connects": (
        "(src, dst, a, b)",
        "(has_label(src, a) AND has_label(dst, b)) OR (has_label(src, b) AND has_label(dst, a))",
    ),
}

# ---- FlowFilter helpers (fp_*): what `flowpipe serve` filters compile to

_V4 = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_HEX = "[0-9a-fA-F]{1,4}"
# ::ffff:0:0/96, IPv6 addresses that Go's IPNet.Contains treats as IPv4
MAPPED_V4 = (0xFFFF00000000, 0xFFFFFFFFFFFF)
_USERINFO = r"[-._:~!$&'()*+,;=%@A-Za-z0-9]*"
_HOSTCHARS = r"(?:[-A-Za-z0-9_.~!$&'()*+,;=:\[\]<>\x22]|%25|%[89a-fA-F][0-9a-fA-F]|[^\x00-\x7f])*"


def let(value: str, name: str, body: str) -> str:
    """body with name bound to value once (a one-element list_transform), so value is not re-expanded."""
    return f"list_transform([{value}], lambda {name}: {body})[1]"


_IP6_GROUPS = (
    f"CASE WHEN regexp_full_match(s, {quote(f'{_HEX}(?::{_HEX}){{7}}')}) THEN string_split(s, ':') "
    f"WHEN regexp_full_match(s, {quote(f'(?:{_HEX}(?::{_HEX}){{0,6}})?::(?:{_HEX}(?::{_HEX}){{0,6}})?')}) "
    "AND len(regexp_extract_all(s, '[0-9a-fA-F]+')) <= 7 THEN fp_ip6part(split_part(s, '::', 1)) "
    "|| list_transform(range(8 - len(regexp_extract_all(s, '[0-9a-fA-F]+'))), lambda z: '0') "
    "|| fp_ip6part(split_part(s, '::', 2)) END"
)
_URL_PATH = (
    "CASE WHEN NOT starts_with(r, '/') THEN CASE WHEN sc <> '' THEN '' END "
    "WHEN sc <> '' AND starts_with(r, '//') THEN CASE WHEN fp_url_auth_ok(split_part(substr(r, 3), '/', 1)) "
    "THEN fp_url_unescape(substr(r, 3 + length(split_part(substr(r, 3), '/', 1)))) END "
    "ELSE fp_url_unescape(r) END"
)

FILTER_MACROS = {
    # Cilium's parseLabel (":" delimiter) of a flow label string -> {s: source, k: key, v: value}
    "fp_lsrc": (
        "(l)",
        "CASE WHEN starts_with(l, '$') THEN 'reserved' WHEN strpos(l, ':') > 0 THEN split_part(l, ':', 1) "
        "WHEN starts_with(l, 'reserved.') THEN 'reserved' ELSE 'unspec' END",
    ),
    "fp_lrest": (
        "(l)",
        "CASE WHEN starts_with(l, '$') THEN substr(l, 2) WHEN strpos(l, ':') > 0 THEN substr(l, strpos(l, ':') + 1) "
        "WHEN starts_with(l, 'reserved.') THEN substr(l, 10) ELSE l END",
    ),
    "fp_lone": (
        "(l)",
        let(
            "fp_lrest(l)",
            "r",
            let(
                "fp_lsrc(l)",
                "src",
                "{'s': src, 'k': CASE WHEN strpos(r, '=') = 0 THEN r WHEN strpos(r, '=') = 1 AND src = 'reserved' "
                "THEN substr(r, 2) ELSE split_part(r, '=', 1) END, 'v': CASE WHEN strpos(r, '=') = 0 THEN '' "
                "WHEN strpos(r, '=') = 1 AND src = 'reserved' THEN '' ELSE substr(r, strpos(r, '=') + 1) END}",
            ),
        ),
    ),
    "fp_lparse": ("(labels)", "list_transform(coalesce(labels, []), lambda l: fp_lone(l))"),
    # net.ParseIP: a dotted quad (no leading zeros) as a number, else NULL
    "fp_ipv4": (
        "(ip)",
        f"CASE WHEN regexp_full_match(ip, {quote(f'(?:{_V4}[.]){{3}}{_V4}')}) THEN "
        "(split_part(ip, '.', 1)::UBIGINT << 24) + (split_part(ip, '.', 2)::UBIGINT << 16) "
        "+ (split_part(ip, '.', 3)::UBIGINT << 8) + split_part(ip, '.', 4)::UBIGINT END",
    ),
    # net.ParseIP of IPv6 text: a trailing dotted quad becomes two groups; '::' is at least one group
    "fp_ip6norm": (
        "(ip)",
        let(
            "fp_ipv4(regexp_extract(ip, '[^:]*$'))",
            "v",
            "CASE WHEN NOT contains(ip, '.') THEN ip WHEN v IS NULL THEN NULL "
            "ELSE regexp_replace(ip, '[^:]*$', '') || printf('%x:%x', v >> 16, v & 65535) END",
        ),
    ),
    "fp_ip6part": ("(x)", "CASE WHEN x = '' THEN []::VARCHAR[] ELSE string_split(x, ':') END"),
    "fp_ipv6": (
        "(ip)",
        "CASE WHEN contains(ip, ':') THEN "
        + let(
            "fp_ip6norm(ip)",
            "s",
            f"list_reduce(list_transform({_IP6_GROUPS}, lambda g: ('0x' || g)::UHUGEINT), lambda a, b: a * 65536 + b)",
        )
        + " END",
    ),
    # the IPv4 number Go compares with an IPv4 network (dotted quad or IPv4-mapped IPv6)
    "fp_ip4any": (
        "(ip)",
        "coalesce(fp_ipv4(ip), "
        + let(
            "fp_ipv6(ip)",
            "x",
            f"CASE WHEN x BETWEEN {MAPPED_V4[0]} AND {MAPPED_V4[1]} THEN (x - {MAPPED_V4[0]})::UBIGINT END",
        )
        + ")",
    ),
    # url.ParseRequestURI(u).Path, NULL where Go returns an error
    "fp_url_unescape": (
        "(p)",
        "CASE WHEN regexp_matches(p, '%(?:[^0-9a-fA-F]|[0-9a-fA-F][^0-9a-fA-F]|[0-9a-fA-F]?$)') THEN NULL "
        "WHEN contains(p, '%') THEN try(url_decode(p)) ELSE p END",
    ),
    "fp_url_host_ok": (
        "(h)",
        f"regexp_full_match(h, {quote(_HOSTCHARS)}) AND CASE WHEN starts_with(h, '[') "
        r"THEN regexp_full_match(h, '\[.*\](?::[0-9]*)?') "
        "WHEN contains(h, ':') THEN regexp_full_match(h, '.*:[0-9]*') ELSE TRUE END",
    ),
    "fp_url_auth_ok": (
        "(a)",
        f"regexp_full_match(a, {quote(f'(?:{_USERINFO}@)?[^@]*')}) AND fp_url_host_ok(regexp_extract(a, '[^@]*$'))",
    ),
    "fp_http_path": (
        "(u)",
        r"CASE WHEN coalesce(u, '') = '' OR regexp_matches(u, '[\x00-\x1f\x7f]') OR starts_with(u, ':') THEN NULL "
        "WHEN u = '*' THEN '*' ELSE "
        + let(
            "regexp_extract(u, '^([a-zA-Z][a-zA-Z0-9+.-]*):', 1)",
            "sc",
            let(
                "split_part(CASE WHEN sc <> '' THEN substr(u, length(sc) + 2) ELSE u END, '?', 1)",
                "r",
                _URL_PATH,
            ),
        )
        + " END",
    ),
}


MACROS = {**RULE_MACROS, **FILTER_MACROS}
