"""Run every benchmark under bench/ and print a summary table (figures also in bench/.results/)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import BENCH, RESULTS, load_note

# name, script, arguments (full), arguments (--quick), seconds allowed
BENCHMARKS = [
    ("peer_rate", "peer_rate.py", ["--flows", "500000"], ["--flows", "200000"], 300),
    ("collect_stages", "collect_stages.py", [], ["--batches", "3", "--receive", "100000"], 600),
    (
        "collect_throughput_1",
        "collect_throughput.py",
        ["--flows", "1000000"],
        ["--flows", "300000"],
        900,
    ),
    (
        "collect_throughput_2",
        "collect_throughput.py",
        ["--flows", "1000000", "--clusters", "2"],
        ["--flows", "300000", "--clusters", "2"],
        900,
    ),
    (
        "storage",
        "storage.py",
        ["--flows", "1000000"],
        ["--flows", "120000", "--verify", "5000"],
        1200,
    ),
    (
        "storage_collect",
        "storage.py",
        ["--flows", "1000000", "--writer", "collect", "--batch", "30000"],
        ["--flows", "120000", "--verify", "5000", "--writer", "collect", "--batch", "30000"],
        1200,
    ),
    (
        "collect_rss",
        "collect_throughput.py",
        ["--rss", "--rate", "30000", "--duration", "300"],
        ["--rss", "--rate", "30000", "--duration", "60"],
        900,
    ),
    # a big store is built once and cached (bench/bigstore.py: ~4 min for 1M, ~9 min for 10M)
    ("check_speed", "check_speed.py", [], ["--flows", "1000000", "--no-jq", "--repeat", "1"], 5400),
    ("serve_speed", "serve_speed.py", [], ["--flows", "1000000", "--max-seconds", "20"], 1800),
    (
        "import_speed",
        "import_speed.py",
        ["--flows", "200000"],
        ["--flows", "50000", "--repeat", "1", "--stream-copies", "3"],
        1800,
    ),
    ("policy_speed", "policy_speed.py", [], ["--flows", "1000000", "--repeat", "1"], 1800),
    # stage 5 on a loopback Spark cluster (two workers) beside DuckDB, over the same big store
    ("spark_check", "spark_check.py", [], ["--flows", "1000000", "--repeat", "1"], 3600),
]


HELPERS = {"common.py", "mix.py", "run.py", "bigstore.py"}  # modules that are not benchmarks


def others() -> list[tuple[str, str, list[str], list[str], int]]:
    """Benchmarks in bench/ that the table above does not know: run with their defaults."""
    known = {b[1] for b in BENCHMARKS} | HELPERS
    return [
        (p.stem, p.name, [], [], 900) for p in sorted(BENCH.glob("*.py")) if p.name not in known
    ]


def run_one(cmd: list[str], timeout: float) -> tuple[int | str, str]:
    """Run cmd with its output passed through; (exit code, last non-empty stdout line)."""
    last = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            print(line, end="", flush=True)
            last = line.strip() or last
            if time.monotonic() > deadline:
                proc.kill()
                return "timeout", last
        return proc.wait(), last


def summary(name: str, r: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) rows for one benchmark's results."""
    if name == "peer_rate":
        return [("peer -> trivial Python client", f"{r['msgs_per_s']:,} msgs/s", ">= 60,000")]
    if name == "collect_stages":
        return [
            (
                "collector CPU per flow, all stages",
                f"{r['total_us']} us/flow",
                "<= 33 us (30k/s on 1 core)",
            )
        ]
    if name.startswith("collect_throughput"):
        return [
            (
                f"collect end to end, {r['clusters']} relay(s)",
                f"{r['flows_per_s']:,} flows/s",
                ">= 30,000",
            ),
            (f"collect peak RSS, {r['clusters']} relay(s)", f"{r['peak_rss_mb']:,} MB", ""),
        ]
    if name.startswith("storage"):
        return [
            (
                f"store bytes/flow vs gzip jsonpb ({r.get('writer', 'import')}, before compaction)",
                f"{r['parquet_b']} vs {r['gzip_jsonpb_b']} B = {r['ratio']}x",
                "<= 0.45x",
            ),
            ("lossless (sampled)", r["lossless"], "all equal"),
        ]
    if name == "collect_rss":
        return [
            (
                f"RSS, {r['rate']:,}/s for {r['duration_s']:.0f}s",
                f"{r['rss_steady_min_mb']}..{r['rss_steady_max_mb']} MB (peak {r['peak_rss_mb']})",
                "<= 250 MB",
            )
        ]
    if name == "check_speed":
        rows = []
        for n, st in sorted(r["stores"].items(), key=lambda kv: int(kv[0])):
            s5 = st["check_s"].get("stage5.sql")
            others = ", ".join(
                f"{k.split('.')[0][-1]}: {v:.2f}"
                for k, v in st["check_s"].items()
                if k != "stage5.sql" and "since" not in k
            )
            if s5 is not None:
                ratio = f", {st['ratio']:,}x jq" if st.get("ratio") else ""
                rows.append(
                    (
                        f"check stage 5 over {int(n):,} flows",
                        f"{s5:.2f} s{ratio}",
                        "< 3 s, >= 100x jq (10M)",
                    )
                )
            if others:
                rows.append((f"check stages over {int(n):,} flows", f"{others} s", ""))
        return rows
    if name == "import_speed":
        rss = "<= 300 MB"
        return [
            (
                f"import {r['flows']:,} jsonpb flows",
                f"{r['flows_s']:,} flows/s = {r['vs_hubble']}x hubble"
                + (f" ({r['vs_jq']}x jq)" if r.get("vs_jq") else "")
                + f", {r['vs_hubble_free_cores']}x on free cores",
                ">= 1.5x hubble",
            ),
            ("import peak RSS (every case)", f"{r['peak_rss_mb']} MB", rss),
        ]
    if name == "serve_speed":
        return [
            (
                f"serve --since {q['since']} filter {q['filter']} ({r['flows']:,} stored)",
                f"first flow {q['first_s']} s, {q['flows_per_s']:,} flows/s",
                "",
            )
            for q in r["results"]
        ]
    return []


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks one after another, then print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes in all)")
    ap.add_argument("--only", action="append", help="run only these benchmarks (repeatable)")
    ap.add_argument("--skip", action="append", default=[], help="skip these benchmarks")
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    failed = []
    ran = []
    last_lines = {}
    for name, script, full, quick, timeout in BENCHMARKS + others():
        if (args.only and name not in args.only) or name in args.skip:
            continue
        cmd = [sys.executable, str(BENCH / script), *(quick if args.quick else full)]
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        code, last_lines[name] = run_one(cmd, timeout)
        print(f"-- {name}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        ran.append(name)
        if code != 0:
            failed.append(name)
    rows = []
    for name in ran:
        path = RESULTS / f"{name}.json"
        if name in failed:
            rows.append((name, "FAILED", "", ""))
        elif any(b[0] == name for b in BENCHMARKS) and path.exists():
            rows += [(name, *row) for row in summary(name, json.loads(path.read_text()))]
        else:
            rows.append((name, "last line", last_lines[name][:90], ""))
    widths = [
        max(len(str(r[i])) for r in rows + [("benchmark", "figure", "measured", "target")])
        for i in range(4)
    ]
    print(f"\n{load_note()}")
    for r in [("benchmark", "figure", "measured", "target"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
