"""How fast the Node peer alone pushes GetFlows messages to a trivial Python grpc client."""

from __future__ import annotations

import argparse
import sys
import time

import grpc
import grpc.experimental
from common import Peer, load_note, save_result, templates

METHOD = "/observer.Observer/GetFlows"
GET_FLOWS_FOLLOW_SINCE_1S = b"\x18\x01\x3a\x02\x08\x01"  # follow=true, since={seconds: 1}


def receive(address: str, n: int, single_threaded: bool) -> tuple[float, int]:
    """(seconds, bytes) to receive n raw messages on one GetFlows stream."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if single_threaded:
        options.append((grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1))
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)(
            GET_FLOWS_FOLLOW_SINCE_1S
        )
        got = size = 0
        started = None
        for raw in call:
            if started is None:
                started = time.perf_counter()
            got += 1
            size += len(raw)
            if got == n:
                break
        elapsed = time.perf_counter() - (started or time.perf_counter())
        call.cancel()
    if got != n:
        raise RuntimeError(f"stream ended after {got} of {n} messages")
    return elapsed, size


def main(argv: list[str] | None = None) -> int:
    """Run the peer with --flows N and time a trivial client receiving them."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, default=500_000, help="messages to receive")
    ap.add_argument(
        "--default-client",
        action="store_true",
        help="also measure grpcio's default (multi-threaded) iterator",
    )
    ap.add_argument(
        "--min-rate", type=float, default=60_000, help="the peer must be faster than this"
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 below --min-rate")
    args = ap.parse_args(argv)
    print(load_note())
    tpl = templates()
    results = {}
    variants = [("single-threaded", True)] + ([("default", False)] if args.default_client else [])
    for label, single in variants:
        with Peer(tpl, args.flows, end=True) as peer:
            secs, size = receive(peer.address, args.flows, single)
            peer.stop()
            rate = args.flows / secs
            results[label] = rate
            print(
                f"{label:>16} client: {args.flows:,} msgs ({size / args.flows:,.0f} B mean) in {secs:.2f}s = "
                f"{rate:,.0f} msgs/s received; peer reports {peer.send_rate() or 0:,.0f} msgs/s sent"
            )
    rate = results["single-threaded"]
    save_result(
        "peer_rate",
        {
            "flows": args.flows,
            "msgs_per_s": round(rate),
            **{f"{k}_msgs_per_s": round(v) for k, v in results.items()},
        },
    )
    if rate < args.min_rate:
        print(
            f"peer_rate: {rate:,.0f} msgs/s is below {args.min_rate:,.0f}: too slow to benchmark a collector "
            f"({load_note()})",
            file=sys.stderr,
        )
        return 1 if args.strict else 0
    print(f"peer_rate: OK, above {args.min_rate:,.0f} msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
