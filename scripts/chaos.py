"""`make chaos`: kill -9 workers in the middle of streams many times; every stream must
complete with its uninterrupted greedy text. Writes bench/results/chaos.json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the chaos helpers live with the tests

from llmserve.cli.redis_server import RedisServer  # noqa: E402
from llmserve.cli.suite import LocalSuite, Ports  # noqa: E402
from tests.support.chaos import CHAOS_ENV, ChaosReport, chaos_round, reference_texts  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    report = ChaosReport()
    started = time.monotonic()
    with RedisServer() as redis, tempfile.TemporaryDirectory() as logs:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=Path(logs), with_monitor=False,
                           workers=args.workers, env=CHAOS_ENV)
        try:
            suite.start(timeout=300)
            references = reference_texts(suite)
            for round_no in range(args.kills):
                chaos_round(suite, references, report, round_no)
                print(f"round {round_no + 1}/{args.kills}: {report.summary()}", flush=True)
                write(report, started, args.kills)  # after every round: an interrupted run still reports
        finally:
            suite.stop()
    print(json.dumps(write(report, started, args.kills), indent=2))
    return 1 if report.failures else 0


def write(report: ChaosReport, started: float, planned: int) -> dict:
    result = report.summary() | {"planned_kills": planned, "seconds": round(time.monotonic() - started, 1),
                                 "failure_details": report.failures[:20]}
    out = ROOT / "bench" / "results" / "chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main())
