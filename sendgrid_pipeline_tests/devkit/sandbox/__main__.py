"""Run the SendGrid emulator until SIGINT or SIGTERM (`python -m <this package>`).

It creates the lists named in destinations.yaml and prints the two environment settings a
pipeline run needs (SENDGRID_BASE_URL, SENDGRID_API_KEY), so a shell or a test can pick them up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from sendgrid_pipeline_tests.devkit.sandbox.faults import SCRIPTED_FAULTS, FaultPlan
from sendgrid_pipeline_tests.devkit.sandbox.latency import PRESETS, LatencyModel
from sendgrid_pipeline_tests.devkit.sandbox.server import SandboxServer, require_loopback

DATA_DIR_ENV = "SENDGRID_PIPELINE_DATA_DIR"


def default_destinations_file() -> Path:
    """$SENDGRID_PIPELINE_DATA_DIR/destinations.yaml, else the repository's data/ directory."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    root = Path(data_dir) if data_dir else Path(__file__).resolve().parents[3] / "data"
    return root / "destinations.yaml"


def _rate_limit(text: str) -> tuple[int, float]:
    try:
        requests, window = text.split("/")
        return int(requests), float(window)
    except ValueError:
        raise argparse.ArgumentTypeError("expected REQUESTS/SECONDS, e.g. 10/1") from None


def _codes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(code) for code in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated codes, e.g. 500,503") from None


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected NAME=VALUE, e.g. job_workers=4")
    return name.strip(), value.strip()


def _script(text: str) -> list[str]:
    return [step.strip() for step in text.split(",") if step.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sendgrid_pipeline_tests.devkit.sandbox",
        description="Local emulator of the SendGrid Marketing API (loopback only).",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument(
        "--destinations",
        type=Path,
        help=f"destinations.yaml whose lists to create (default: ${DATA_DIR_ENV}/destinations.yaml "
        "or data/destinations.yaml)",
    )
    parser.add_argument("--api-key", help="the key clients must send (default: a random one)")
    parser.add_argument(
        "--job-delay",
        type=float,
        default=0.05,
        help="seconds a job stays pending (the fixed latency model)",
    )
    timing = parser.add_argument_group("timing (docs/BENCHMARKS.md: the latency model)")
    timing.add_argument(
        "--latency",
        choices=PRESETS,
        default="fixed",
        help="fixed: every job pending --job-delay seconds, nothing else slowed (default); "
        "realistic: job time by size, the account's queue, round trips, per-endpoint rate "
        "limits and lagging list counts",
    )
    timing.add_argument(
        "--latency-set",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one parameter of the model, e.g. job_workers=4 (repeatable)",
    )
    faults = parser.add_argument_group("faults (all off by default)")
    faults.add_argument(
        "--fault-rate-limit",
        type=_rate_limit,
        metavar="N/SECONDS",
        help="at most N requests per window, e.g. 10/1; then 429 until the window resets",
    )
    faults.add_argument("--fault-burst-429", type=int, default=0, metavar="K", help="next K: 429")
    faults.add_argument(
        "--fault-5xx-rate", type=float, default=0.0, metavar="SHARE", help="share answered 5xx"
    )
    faults.add_argument(
        "--fault-5xx-codes", type=_codes, default=(500, 503), metavar="CODES", help="e.g. 500,503"
    )
    faults.add_argument(
        "--fault-slow-rate", type=float, default=0.0, metavar="SHARE", help="share answered late"
    )
    faults.add_argument("--fault-slow-seconds", type=float, default=1.0, metavar="SECONDS")
    faults.add_argument(
        "--fault-drop-rate",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share whose connection is closed without an answer",
    )
    faults.add_argument(
        "--fault-reject-email-pattern",
        metavar="REGEX",
        help="rows whose email matches are rejected when the job runs",
    )
    faults.add_argument(
        "--fault-fail-jobs", action="store_true", help="every upsert job ends 'failed'"
    )
    faults.add_argument(
        "--fault-only-paths", metavar="REGEX", help="paths where 5xx/slow/drop/429 faults apply"
    )
    faults.add_argument(
        "--fault-script",
        type=_script,
        default=[],
        metavar="LIST",
        help=f"comma-separated faults for the next requests: {', '.join(sorted(SCRIPTED_FAULTS))}",
    )
    faults.add_argument(
        "--fault-seed", type=int, metavar="SEED", help="makes random faults repeatable"
    )
    return parser


def command(
    api_key: str,
    destinations: Path,
    port: int = 0,
    job_delay: float = 0.05,
    latency: str = "fixed",
) -> list[str]:
    """The command line that starts this sandbox as its own process on loopback."""
    return [
        sys.executable,
        "-m",
        "sendgrid_pipeline_tests.devkit.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        api_key,
        "--destinations",
        str(destinations),
        "--job-delay",
        str(job_delay),
        "--latency",
        latency,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        require_loopback(args.host)
        plan = FaultPlan(
            rate_limit=args.fault_rate_limit,
            burst_429=args.fault_burst_429,
            error_5xx_rate=args.fault_5xx_rate,
            error_5xx_codes=args.fault_5xx_codes,
            slow_rate=args.fault_slow_rate,
            slow_seconds=args.fault_slow_seconds,
            drop_rate=args.fault_drop_rate,
            reject_email_pattern=args.fault_reject_email_pattern,
            fail_jobs=args.fault_fail_jobs,
            only_paths=args.fault_only_paths,
            scripted=args.fault_script,
            seed=args.fault_seed,
        )
        latency = LatencyModel.from_preset(args.latency, args.job_delay).with_changes(
            dict(args.latency_set)
        )
    except ValueError as problem:
        parser.error(str(problem))

    destinations = args.destinations or default_destinations_file()
    if destinations.is_file():
        lists = SandboxServer.lists_from_destinations_file(destinations)
    elif args.destinations:
        parser.error(f"{destinations}: file not found")
    else:
        print(f"sandbox: {destinations} not found; starting with no lists", file=sys.stderr)
        lists = {}

    server = SandboxServer(
        api_key=args.api_key,
        lists=lists,
        host=args.host,
        port=args.port,
        job_delay_seconds=args.job_delay,
        faults=plan,
        latency=latency,
    )
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with server:
        print(f"SENDGRID_BASE_URL={server.base_url}")
        print(f"SENDGRID_API_KEY={server.api_key}")
        print(f"sandbox: serving {len(lists)} lists; stop with Ctrl-C", file=sys.stderr)
        sys.stdout.flush()
        stopping.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
