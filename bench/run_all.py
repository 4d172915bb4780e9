"""`make bench`: every bench/*.py in turn, each bounded in time; all results in one file per run.

Writes bench/results/<date>-<host>.json (per bench: exit code, seconds, the figures it recorded
through bench/results.py, its printed output) and bench/results/<date>-<host>.md (a summary to
read or paste). bench/results/ is git-ignored: figures belong to a machine and a day; the README
quotes the ones that matter. Exit status 1 when any bench failed or ran out of time.

    python bench/run_all.py [--only tiny_speed,server_start] [--skip gpu_check] [--timeout 900]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELPERS = {"results", "run_all"}  # modules of the bench harness, not benches
TAIL_LINES = 40


def run_one(path: Path, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile(prefix="animenb-bench-", suffix=".jsonl", delete=False) as f:
        records_path = f.name
    env = {**os.environ, "ANIMENB_BENCH_RESULTS": records_path}
    started = time.perf_counter()
    lines: list[str] = []
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=HERE.parent, start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)  # the bench and the servers it started (its own session)

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        for line in proc.stdout:  # streamed, so a long bench shows its progress
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        proc.wait()
    finally:
        watchdog.cancel()
    records = [json.loads(line) for line in Path(records_path).read_text().splitlines() if line.strip()]
    os.unlink(records_path)
    return {"bench": path.stem, "returncode": proc.returncode, "timed_out": timed_out.is_set(),
            "seconds": round(time.perf_counter() - started, 1),
            "figures": {r["bench"]: r["figures"] for r in records}, "output": lines[-200:]}


def markdown(run: dict) -> str:
    out = [f"# animenb bench results {run['date']} on {run['host']}", "",
           f"{run['machine']}; python {run['python']}; animenb {run['commit']}; load average at start "
           f"{run['load_average']}", "", "| bench | result | seconds |", "|---|---|---|"]
    for b in run["benches"]:
        status = "timed out" if b["timed_out"] else ("ok" if b["returncode"] == 0 else f"exit {b['returncode']}")
        out.append(f"| {b['bench']} | {status} | {b['seconds']} |")
    for b in run["benches"]:
        out += ["", f"## {b['bench']}", ""]
        for name, figures in b["figures"].items():
            out.append(f"`{name}`: " + json.dumps(figures))
            out.append("")
        out += ["```", *b["output"][-TAIL_LINES:], "```"]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma list of bench names (file stems) to run")
    parser.add_argument("--skip", default="", help="comma list of bench names to leave out")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per bench")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    benches = [p for p in sorted(HERE.glob("*.py"))
               if p.stem not in HELPERS and p.stem not in skip and (not only or p.stem in only)]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE.parent).stdout.strip() or "?"
    except OSError:
        commit = "?"
    now = dt.datetime.now(dt.timezone.utc)
    host = socket.gethostname().split(".")[0] or "host"
    run = {"date": now.strftime("%Y-%m-%d"), "started_at": now.isoformat(timespec="seconds"), "host": host,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
           "commit": commit, "load_average": round(os.getloadavg()[0], 1), "benches": []}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stem = results / f"{run['date']}-{host}"
    for path in benches:
        print(f"\n=== bench/{path.name} ===", flush=True)
        run["benches"].append(run_one(path, args.timeout))
        stem.with_suffix(".json").write_text(json.dumps(run, indent=1))  # after each: a killed run keeps its part
        stem.with_suffix(".md").write_text(markdown(run))
    failed = [b["bench"] for b in run["benches"] if b["returncode"] != 0 or b["timed_out"]]
    print(f"\nresults: {stem}.json and {stem}.md" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
