"""Generated code must equal what `make protos` produces from proto/ today."""

from __future__ import annotations

from pathlib import Path

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2, observer_pb2_grpc
from tools import protogen


def test_generated_code_matches_protos(tmp_path: Path):
    protogen.generate(tmp_path)
    fresh = {
        p.relative_to(tmp_path): p.read_text()
        for p in tmp_path.rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    committed = {
        p.relative_to(protogen.API_DIR): p.read_text()
        for p in protogen.API_DIR.rglob("*.py*")
        if "__pycache__" not in p.parts and p.suffix in (".py", ".pyi")
    }
    assert sorted(fresh) == sorted(committed), "run `make protos`"
    drift = [str(k) for k in fresh if fresh[k] != committed[k]]
    assert drift == [], f"generated code drifted from proto/ (run `make protos`): {drift}"


def test_wire_names_follow_upstream():
    # the names a real Relay and the hubble CLI put on the wire
    svc = observer_pb2.DESCRIPTOR.services_by_name["Observer"]
    assert svc.full_name == "observer.Observer"
    assert [m.name for m in svc.methods] == [
        "GetFlows",
        "GetAgentEvents",
        "GetDebugEvents",
        "GetNodes",
        "GetNamespaces",
        "ServerStatus",
    ]
    flow = flow_pb2.Flow.DESCRIPTOR
    numbers = {f.name: f.number for f in flow.fields}
    assert numbers["time"] == 1 and numbers["uuid"] == 34 and numbers["verdict"] == 2
    assert numbers["ingress_allowed_by"] == 21002 and numbers["egress_allowed_by"] == 21001
    assert numbers["Summary"] == 100000 and numbers["is_reply"] == 26
    resp = observer_pb2.GetFlowsResponse.DESCRIPTOR
    assert {f.name: f.number for f in resp.fields} == {
        "flow": 1,
        "node_status": 2,
        "lost_events": 3,
        "node_name": 1000,
        "time": 1001,
    }
    assert hasattr(observer_pb2_grpc, "ObserverStub")
