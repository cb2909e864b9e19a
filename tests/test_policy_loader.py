"""Reading policy files: multi-document YAML, List kinds, directories, stdin, kustomize output,
and one clear `file:line` line for every document the API server or the agent would refuse."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from flowpipe.errors import InputError
from flowpipe.policy import loader, parse
from flowpipe.policy import selectors as sel
from flowpipe.policy.model import EGRESS, INGRESS

LAB = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "lab"


def load(text: str, name: str = "p.yaml", tmp: Path | None = None) -> parse.ParseResult:
    if tmp is not None:
        path = tmp / name
        path.write_text(textwrap.dedent(text))
        docs = loader.load([str(path)])
    else:
        docs = loader.read_documents("-", io.StringIO(textwrap.dedent(text)))
    return parse.parse(docs, sel.RE2())


def refusal(text: str, tmp: Path) -> str:
    with pytest.raises(InputError) as err:
        load(text, tmp=tmp)
    return str(err.value)


CNP = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: {name}
  namespace: shop
spec:
  endpointSelector: {{}}
  egress:
    - toEntities: [world]
"""


def test_lab_directory_recursively_sorted():
    files = loader.policy_files([str(LAB)])
    assert [Path(f).name for f in files] == [
        "backend.yaml",
        "frontend.yaml",
        "namespace.yaml",
        "allow-all.yaml",
        "allow-dns.yaml",
        "allow-frontend-egress.yaml",
        "allow-frontend-to-backend.yaml",
        "allow-frontend-l7.yaml",
        "default-deny.yaml",
    ]
    result = parse.parse(loader.load([str(LAB)]), sel.RE2())
    assert [p.name for p in result.policies] == [
        "allow-all",
        "allow-dns",
        "allow-frontend-egress",
        "allow-frontend-to-backend",
        "allow-frontend-l7",
        "default-deny",
    ]
    assert result.skipped == {"Deployment": 2, "Service": 1, "Namespace": 1}


def test_kustomize_output_multidoc_and_list(tmp_path: Path):
    """kustomize build output: many documents, other kinds, a List, stray separators."""
    items = """\
apiVersion: v1
kind: List
items:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: b, namespace: shop}
    spec:
      endpointSelector: {}
"""
    text = (
        "---\n"
        + CNP.format(name="a")
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n---\n"
        + items
    )
    result = load(text, tmp=tmp_path)
    assert [(p.name, p.where) for p in result.policies] == [
        ("a", f"{tmp_path}/p.yaml:2"),
        ("b", f"{tmp_path}/p.yaml:20"),
    ]
    assert result.skipped == {"Service": 1}


def test_stdin():
    result = parse.parse(loader.load(["-"], io.StringIO(CNP.format(name="x"))), sel.RE2())
    assert result.policies[0].where == "<stdin>:1"


def test_specs_and_rules_model():
    text = """\
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: two, namespace: shop}
    specs:
      - endpointSelector: {matchLabels: {app: a}}
        ingress: [{fromEndpoints: [{matchLabels: {app: b}}]}]
      - endpointSelector: {matchLabels: {app: c}}
        egressDeny: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]
    """
    (p,) = load(text).policies
    first, second = p.rules
    assert first.rules(INGRESS, False)[0].endpoints[0].text == (
        "{app=b, k8s:io.kubernetes.pod.namespace=shop}"
    )
    assert second.rules(EGRESS, True)[0].cidrs[0].excepts == ("10.1.0.0/16",)
    assert first.enables_default_deny(INGRESS) and not first.enables_default_deny(EGRESS)


def test_default_deny_yaml_is_named(tmp_path: Path):
    result = parse.parse(loader.load([str(LAB / "stage5")]), sel.RE2())
    (p,) = result.policies
    assert p.rules[0].peer_rules == ()
    assert any("ingress: [] and egress: []" in n and "changes nothing" in n for n in p.notes)


def test_unknown_fields_are_notes(tmp_path: Path):
    text = CNP.format(name="typo").replace("- toEntities: [world]", "- toEntity: [world]")
    (p,) = load(text, tmp=tmp_path).policies
    assert p.notes == [
        f"{tmp_path}/p.yaml:9: unknown field egress[0].toEntity: the API server drops it"
    ]
    # what is left is an empty rule: egress default deny, nothing allowed
    assert p.rules[0].enables_default_deny(EGRESS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2\n", "p.yaml:2: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        ("a: 1\na: 2\n", "p.yaml:2: invalid YAML: duplicate key 'a'"),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: shop}\nspec: {}\n",
            "p.yaml:1: CiliumNetworkPolicy without metadata.name",
        ),
        (
            CNP.format(name="x").replace(
                "endpointSelector: {}", "endpointSelector: {}\n  nodeSelector: {}"
            ),
            "p.yaml:7: a spec needs exactly one of endpointSelector and nodeSelector",
        ),
        (
            CNP.format(name="x").replace("- toEntities: [world]", "- toEntities: [internet]"),
            "p.yaml:9: egress[0].toEntities: entities are all, cluster",
        ),
        (
            CNP.format(name="x").replace(
                "- toEntities: [world]", '- toPorts: [{ports: [{port: "99999"}]}]'
            ),
            "p.yaml:9: egress[0].toPorts[0].ports[0].port '99999' is not a port number",
        ),
        (
            CNP.format(name="x").replace(
                "- toEntities: [world]", '- toPorts: [{ports: [{port: "53", protocol: ICMP}]}]'
            ),
            "p.yaml:9: egress[0].toPorts[0].ports[0].protocol 'ICMP' is not one of TCP, UDP, SCTP, ANY",
        ),
        (
            CNP.format(name="x").replace("- toEntities: [world]", "- toCIDR: [10.0.0.0/33]"),
            "p.yaml:9: invalid CIDR '10.0.0.0/33'",
        ),
        (
            CNP.format(name="x").replace(
                "- toEntities: [world]",
                "- toEndpoints: [{matchExpressions: [{key: app, operator: Is}]}]",
            ),
            "p.yaml:9: egress[0].toEndpoints[0].matchExpressions[0]: needs key and operator",
        ),
        (
            CNP.format(name="x").replace(
                "- toEntities: [world]",
                '- toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "/a(["}]}}]',
            ),
            "p.yaml:9: egress[0].toPorts[0].rules.http[0].path: '/a([' is not a valid RE2 regex",
        ),
        (
            CNP.format(name="x").replace(
                "- toEntities: [world]",
                "- toFQDNs: [{matchPattern: 'a b'}]",
            ),
            "p.yaml:9: egress[0].toFQDNs[0]: invalid matchPattern 'a b'",
        ),
        (
            CNP.format(name="x").replace(
                "- toEntities: [world]",
                "- toFQDNs: [{matchName: a.com}]\n      toEntities: [world]",
            ),
            "p.yaml:9: egress[0]: toFQDNs cannot be combined with other L3 rules",
        ),
        (
            CNP.format(name="x") + "---\n" + CNP.format(name="x"),
            "p.yaml:11: CiliumNetworkPolicy shop/x is also defined at",
        ),
        (
            CNP.format(name="x").replace("cilium.io/v2", "networking.k8s.io/v1"),
            "p.yaml:1: CiliumNetworkPolicy x: apiVersion 'networking.k8s.io/v1' is not cilium.io/...",
        ),
    ],
)
def test_refusals_name_file_and_line(tmp_path: Path, text: str, message: str):
    got = refusal(text, tmp_path)
    assert got.startswith(f"{tmp_path}/{message}"), got
    assert "\n" not in got


def test_errors_are_counted(tmp_path: Path):
    text = CNP.format(name="x").replace("- toEntities: [world]", "- toCIDR: [nope, 1.2.3.4/99]")
    got = refusal(text, tmp_path)
    assert got.endswith("(and 1 more errors)")


def test_missing_path_and_empty_directory(tmp_path: Path):
    with pytest.raises(InputError, match="no such file or directory"):
        loader.policy_files([str(tmp_path / "nope.yaml")])
    with pytest.raises(InputError, match="no .yaml, .yml, .json files"):
        loader.policy_files([str(tmp_path)])


def test_network_policy_translation():
    text = """\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: np, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: backend}}
      policyTypes: [Ingress, Egress]
      ingress:
        - from:
            - namespaceSelector: {matchLabels: {team: a}}
              podSelector: {matchLabels: {app: client}}
            - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
          ports: [{port: 80}, {protocol: UDP, port: 5000, endPort: 5010}]
    """
    (p,) = load(text).policies
    (rule,) = p.rules
    ingress = rule.rules(INGRESS, False)
    assert len(ingress) == 2
    assert ingress[0].endpoints[0].text == "{k8s:app=client, namespace {team=a}}"
    assert [pp.text() for pr in ingress[0].ports for pp in pr.ports] == ["80/TCP", "5000-5010/UDP"]
    # policyTypes Egress without egress rules: egress [{}], default deny
    (egress,) = rule.rules(EGRESS, False)
    assert not egress.has_l3 and egress.ports is None
    assert rule.enables_default_deny(EGRESS)
