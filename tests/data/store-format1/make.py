"""Write the jsonpb sources of this store (run with flowpipe at commit f9b366b; see README.md)."""

import sys
from pathlib import Path

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.lab import generate as lab

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rs = lab.generate(5, "cluster1", seed=7)
half = len(rs) // 2
t3, t5 = rs[3].flow.time.ToNanoseconds(), rs[5].flow.time.ToNanoseconds()
lost = observer_pb2.GetFlowsResponse(node_name="cluster1/relay")
lost.lost_events.source = flow_pb2.HUBBLE_RING_BUFFER
lost.lost_events.num_events_lost = 3
lost.lost_events.cpu.value = 1
lost.lost_events.first.FromNanoseconds(t3 - 1234)
lost.lost_events.last.FromNanoseconds(t3 + 987654321)
lost.time.FromNanoseconds(t3 + 5)
status = observer_pb2.GetFlowsResponse(node_name="cluster1/relay")
status.node_status.state_change = 2
status.node_status.node_names.extend(["cluster1/node-a"])
status.node_status.message = "gone away"
status.time.FromNanoseconds(t5 + 17)
upper = observer_pb2.GetFlowsResponse()
upper.CopyFrom(rs[-1])
upper.flow.uuid = upper.flow.uuid.upper()
upper.flow.time.nanos += 1
lab.write_jsonpb(rs[:half] + [lost, status], out / "a.jsonl")
lab.write_jsonpb(rs[half:] + [upper], out / "b.jsonl")
