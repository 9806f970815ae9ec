"""`make bench`: time one destination's export at N profiles, the way a user runs it.

Why this shape: the honest figure is the Dagster CLI as a separate process (start-up, code
location load, run storage and all) against a SendGrid sandbox in *another* process, so the
sandbox's CPU is not counted as ours and can be reported on its own. Three runs:

1. ``initial``: an empty list; every accepted contact is sent.
2. ``no_change``: the same profiles again; nothing may be sent.
3. ``change``: a mapped field (``city``) changed on a share of the profiles (default 1%);
   exactly the contacts those profiles feed must be sent.

How each figure is obtained:

* total wall: monotonic clock around the ``dagster asset materialize`` subprocess;
* per-stage wall: STEP_START -> STEP_SUCCESS/STEP_FAILURE timestamps in the run's event log
  (read from the temporary DAGSTER_HOME); "startup" is launch -> first STEP_START, "teardown"
  last step end -> exit;
* CPU (total): ``os.wait4`` rusage of the Dagster process; CPU per stage: /proc/<pid>/stat of
  the process tree sampled every 20 ms and interpolated at the step boundaries (Linux only);
* peak RSS: ``ru_maxrss`` from ``os.wait4``;
* sandbox CPU: /proc/<pid>/stat of the sandbox process before and after (sampled the same way
  per stage); requests, contacts and bytes: the sandbox's ``GET /sandbox/stats`` totals;
* minimum upsert requests: ``minimum_batches`` over the contacts that had to be sent,
  serialized exactly as the sync serializes them.

The last line printed is one JSON object; everything above it is for people.

    python -m sendgrid_pipeline_tests.devkit.bench --profiles 100000
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from sendgrid_pipeline.sendgrid.batching import BODY_SUFFIX, body_prefix, minimum_batches
from sendgrid_pipeline_tests.devkit.sample_data import generate_profiles, write_profiles
from sendgrid_pipeline_tests.devkit.sandbox.__main__ import command as sandbox_command

DESTINATION = "bench"
LIST_ID = "0b3c5e7a-be9c-4000-8000-00000000be9c"
SEGMENT = "opted_in"
SEGMENT_RULE = "email_opt_in"
CHANGED_FIELD = "city"  # a mapped field that no segment rule reads: membership stays the same
CHANGED_VALUE = "Benchmark City"
API_KEY = "SG.sandbox-bench-key"
FIELD_MAPPING = {
    field: field
    for field in (
        "email",
        "first_name",
        "last_name",
        "country",
        "state_province_region",
        "city",
        "postal_code",
    )
}
STEPS = ("unified_profiles", "segment_membership", "sendgrid_contacts", "sendgrid_list_sync")
DAGSTER_ARGS = [
    "asset",
    "materialize",
    "-m",
    "sendgrid_pipeline.definitions",
    "--select",
    "*",
    "--partition",
    DESTINATION,
]
# Targets from the performance issue, by profile count (wall seconds, peak RSS bytes).
WALL_TARGETS = {100_000: 15.0, 1_000_000: 60.0}
RSS_TARGETS = {1_000_000: 1.5e9}
SAMPLE_SECONDS = 0.02
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# -- workspace --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workspace:
    """The temporary directories one benchmark uses; nothing is written to the repository."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def profiles(self) -> Path:
        return self.data / "profiles"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def contacts_file(self) -> Path:
        """Where the IO manager keeps the destination's sendgrid_contacts partition."""
        return self.storage / "sendgrid_contacts" / f"{DESTINATION}.parquet"


def prepare_workspace(root: Path, profiles: int, seed: int, file_format: str) -> Path:
    """Write profiles, one segment and one destination sized to fit; return the profile file."""
    ws = Workspace(root)
    for folder in (ws.profiles, ws.dagster_home, ws.storage, ws.state, ws.logs):
        folder.mkdir(parents=True, exist_ok=True)
    (ws.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    segments = {
        "segments": [
            {
                "id": SEGMENT,
                "name": "Opted in",
                "description": "Most profiles (benchmark).",
                "rule": SEGMENT_RULE,
            }
        ]
    }
    destinations = {
        "destinations": [
            {
                "name": DESTINATION,
                "display_name": "Benchmark",
                "list_id": LIST_ID,
                "consent": True,
                "field_mapping": FIELD_MAPPING,
                "segments": [SEGMENT],
                "profile_cap": max(profiles, 1),
            }
        ]
    }
    (ws.data / "segments.yaml").write_text(yaml.safe_dump(segments, sort_keys=False))
    (ws.data / "destinations.yaml").write_text(yaml.safe_dump(destinations, sort_keys=False))
    path = ws.profiles / f"profiles.{file_format}"
    write_profiles(generate_profiles(profiles, seed), path)
    return path


def change_profiles(path: Path, share: float, seed: int) -> pl.Series:
    """Rewrite `city` on a random share of the profiles; return their customer_ids."""
    frame = read_profiles(path)
    count = max(1, round(frame.height * share)) if frame.height else 0
    rows = np.random.default_rng(seed).choice(frame.height, size=count, replace=False)
    picked = pl.int_range(pl.len()).is_in(pl.Series(rows, dtype=pl.Int64).implode())
    changed = frame.with_columns(
        pl.when(picked)
        .then(pl.lit(CHANGED_VALUE))
        .otherwise(pl.col(CHANGED_FIELD))
        .alias(CHANGED_FIELD)
    )
    write_profiles(changed, path)
    return frame["customer_id"].gather(rows)


def read_profiles(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    from sendgrid_pipeline_tests.devkit.sample_data import read_profiles_csv

    return read_profiles_csv(path)


# -- process measurement ----------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds incl. reaped children, RSS bytes) of one process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / _CLK_TCK, int(fields[21]) * _PAGE


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                found.extend(children)
                stack.extend(children)
    return found


def tree_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds of a process and its live descendants, and the RSS of the process itself.

    Dagster forks helpers (compute-log tailing); a forked child's RSS counts the pages it
    shares with its parent, so summing RSS over the tree would double count.
    """
    root = _proc_stat(pid)
    if root is None:
        return None
    cpu, rss = root
    for child in _descendants(pid):
        usage = _proc_stat(child)
        if usage is not None:
            cpu += usage[0]
    return cpu, rss


class Sampler(threading.Thread):
    """Samples (time, CPU, RSS) of a few processes so CPU can be split by stage afterwards."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.pids = pids
        self.samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in pids}
        self._stop_event = threading.Event()
        self._execed: set[int] = set()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(SAMPLE_SECONDS):
                return

    def sample(self) -> None:
        now = time.time()
        for name, pid in self.pids.items():
            if pid not in self._execed and _cmdline(pid) == _cmdline(os.getpid()):
                continue  # forked but not yet exec'd: it still shows the bench's own memory
            self._execed.add(pid)
            usage = tree_usage(pid)
            if usage is not None:
                self.samples[name].append((now, *usage))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def cpu_between(self, name: str, start: float, end: float) -> float | None:
        """CPU seconds spent in [start, end], interpolated between samples."""
        samples = self.samples[name]
        if len(samples) < 2:
            return None
        return max(0.0, _interpolate(samples, end) - _interpolate(samples, start))

    def peak_rss_between(self, name: str, start: float, end: float) -> int | None:
        inside = [rss for t, _, rss in self.samples[name] if start <= t <= end]
        return max(inside) if inside else None


def _interpolate(samples: list[tuple[float, float, int]], at: float) -> float:
    times = [t for t, _, _ in samples]
    index = bisect.bisect_left(times, at)
    if index <= 0:
        return samples[0][1]
    if index >= len(samples):
        return samples[-1][1]
    (t0, c0, _), (t1, c1, _) = samples[index - 1], samples[index]
    return c0 + (c1 - c0) * ((at - t0) / (t1 - t0) if t1 > t0 else 1.0)


# -- the sandbox as its own process -----------------------------------------------------------
class SandboxProcess:
    """The sandbox as its own process on a free loopback port, stopped on exit."""

    def __init__(self, destinations: Path, log: Path, job_delay: float) -> None:
        self.command = sandbox_command(API_KEY, destinations, job_delay=job_delay)
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> SandboxProcess:
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # it prints SENDGRID_BASE_URL=... once it listens
            if line.startswith("SENDGRID_BASE_URL="):
                self.base_url = line.strip().split("=", 1)[1]
                break
        if not self.base_url:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the sandbox did not start; see {self.log}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/sandbox/stats", timeout=30) as response:
            return json.loads(response.read())

    def cpu_seconds(self) -> float:
        usage = _proc_stat(self.pid)
        return usage[0] if usage is not None else float(self.stats()["process_cpu_seconds"])


# -- one Dagster run --------------------------------------------------------------------------
@dataclass
class RunMeasure:
    name: str
    exit_code: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    sandbox_cpu_seconds: float
    stages: dict[str, dict[str, Any]]
    sandbox: dict[str, Any]
    pipeline: dict[str, Any]
    run_id: str | None
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)


def dagster_command() -> list[str]:
    """The CLI a user would type, from this interpreter's environment."""
    script = Path(sys.executable).with_name("dagster")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "dagster"]
    return [*prefix, *DAGSTER_ARGS]


def run_env(ws: Workspace, base_url: str, poll_interval: float) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(ws.dagster_home),
        DAGSTER_DISABLE_TELEMETRY="1",
        SENDGRID_PIPELINE_DATA_DIR=str(ws.data),
        SENDGRID_PIPELINE_STATE_DIR=str(ws.state),
        SENDGRID_PIPELINE_STORAGE_DIR=str(ws.storage),
        SENDGRID_BASE_URL=base_url,
        SENDGRID_API_KEY=API_KEY,
        SENDGRID_POLL_INTERVAL_SECONDS=str(poll_interval),
    )
    return env


def py_spy_command(output: Path) -> list[str]:
    """`py-spy record` around the CLI: a wall-clock flame graph (idle frames kept)."""
    found = Path(sys.executable).with_name("py-spy")
    executable = str(found) if found.exists() else shutil.which("py-spy")
    if executable is None:
        raise SystemExit("--py-spy needs py-spy: pip install py-spy")
    return [executable, "record", "--subprocesses", "--idle", "--rate", "100", "-o", str(output)]


def measure_run(
    name: str,
    ws: Workspace,
    sandbox: SandboxProcess,
    poll_interval: float,
    profile_dir: Path | None = None,
) -> RunMeasure:
    """Run the CLI once and measure it; the events are read back from the run storage."""
    log = ws.logs / f"{name}.log"
    command = dagster_command()
    if profile_dir is not None:
        command = [*py_spy_command(profile_dir / f"{name}.svg"), "--", *command]
    stats_before, sandbox_cpu_before = sandbox.stats(), sandbox.cpu_seconds()
    with log.open("w") as out:
        launched = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            env=run_env(ws, sandbox.base_url, poll_interval),
            cwd=ws.root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        sampler = Sampler({"dagster": process.pid, "sandbox": sandbox.pid})
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            sampler.stop()
        wall = time.perf_counter() - started
        exited = time.time()
        process.returncode = os.waitstatus_to_exitcode(status)
    sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu_before
    stats_after = sandbox.stats()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    run_id, events = read_events(ws.dagster_home)
    return RunMeasure(
        name=name,
        exit_code=process.returncode,
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=usage.ru_maxrss * scale,
        sandbox_cpu_seconds=sandbox_cpu,
        stages=stage_table(events, sampler, launched, exited),
        sandbox=sandbox_delta(stats_before, stats_after),
        pipeline=events.get("metadata", {}),
        run_id=run_id,
        log=log,
    )


def read_events(dagster_home: Path) -> tuple[str | None, dict[str, Any]]:
    """Step boundaries and the sync's metadata from the newest run in the instance."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records(limit=1)
        if not records:
            return None, {}
        run_id = records[0].dagster_run.run_id
        steps: dict[str, dict[str, float]] = {}
        metadata: dict[str, Any] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or not entry.step_key:
                continue
            kind = event.event_type_value
            if kind == "STEP_START":
                steps.setdefault(entry.step_key, {})["start"] = entry.timestamp
            elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                steps.setdefault(entry.step_key, {})["end"] = entry.timestamp
                steps[entry.step_key]["ok"] = kind == "STEP_SUCCESS"
            elif kind == "ASSET_MATERIALIZATION" and entry.step_key == "sendgrid_list_sync":
                record = event.event_specific_data.materialization
                for key, value in record.metadata.items():
                    value = getattr(value, "value", value)
                    if isinstance(value, int | float | bool | str) and len(str(value)) < 200:
                        metadata[key] = value
        return run_id, {"steps": steps, "metadata": metadata}


def stage_table(
    events: dict[str, Any], sampler: Sampler, launched: float, exited: float
) -> dict[str, dict[str, Any]]:
    """Wall, CPU, peak RSS and sandbox CPU per stage, in execution order."""
    steps = events.get("steps", {})
    bounds: list[tuple[str, float, float]] = []
    ordered = sorted(
        ((key, s) for key, s in steps.items() if "start" in s), key=lambda kv: kv[1]["start"]
    )
    first = ordered[0][1]["start"] if ordered else exited
    bounds.append(("startup", launched, first))
    previous_end = first
    gaps = 0.0
    for key, step in ordered:
        end = step.get("end", exited)
        gaps += max(0.0, step["start"] - previous_end)
        bounds.append((key, step["start"], end))
        previous_end = max(previous_end, end)
    bounds.append(("teardown", previous_end, exited))
    table: dict[str, dict[str, Any]] = {}
    for name, start, end in bounds:
        cpu = sampler.cpu_between("dagster", start, end)
        sandbox_cpu = sampler.cpu_between("sandbox", start, end)
        rss = sampler.peak_rss_between("dagster", start, end)
        table[name] = {
            "wall_seconds": round(end - start, 3),
            "cpu_seconds": None if cpu is None else round(cpu, 3),
            "sampled_peak_rss_mb": None if rss is None else round(rss / 1e6, 1),
            "sandbox_cpu_seconds": None if sandbox_cpu is None else round(sandbox_cpu, 3),
        }
        if name in steps and not steps[name].get("ok", False):
            table[name]["failed"] = True
    if gaps:
        table["between_steps"] = {"wall_seconds": round(gaps, 3)}
    return table


def sandbox_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "requests",
        "body_bytes",
        "upsert_requests",
        "upsert_requests_accepted",
        "upsert_contacts",
        "upsert_body_bytes",
        "handling_seconds",
        "upsert_handling_seconds",
    )
    delta: dict[str, Any] = {key: after[key] - before[key] for key in keys}
    methods = set(before["requests_by_method"]) | set(after["requests_by_method"])
    delta["requests_by_method"] = {
        m: after["requests_by_method"].get(m, 0) - before["requests_by_method"].get(m, 0)
        for m in sorted(methods)
    }
    delta["list_contact_count"] = after["list_sizes"].get(LIST_ID)
    return delta


# -- what had to be sent ----------------------------------------------------------------------
def serialized(contacts: pl.DataFrame) -> pl.Series:
    """Each contact's JSON exactly as the sync asset builds it."""
    from sendgrid_pipeline.transform import contact_json

    return contact_json(contacts, list(FIELD_MAPPING))


def expectation(ws: Workspace, changed_ids: pl.Series | None, no_change: bool) -> dict[str, Any]:
    """Contacts that must be sent, and the fewest upsert requests that can carry them."""
    contacts = pl.read_parquet(ws.contacts_file)
    if no_change:
        contacts = contacts.clear()
    elif changed_ids is not None:
        contacts = contacts.filter(pl.col("customer_id").is_in(changed_ids.implode()))
    sizes = serialized(contacts).str.len_bytes()
    total_bytes = int(sizes.sum() or 0)
    return {
        "contacts_expected": contacts.height,
        "contact_json_bytes_expected": total_bytes,
        "min_upsert_requests": minimum_batches(contacts.height, total_bytes, [LIST_ID]),
    }


def summarize(run: RunMeasure, expected: dict[str, Any]) -> dict[str, Any]:
    sent = run.sandbox
    minimum = expected["min_upsert_requests"]
    requests = sent["upsert_requests"]
    overhead = len(body_prefix([LIST_ID])) + len(BODY_SUFFIX)
    # body = prefix + contacts joined by commas + suffix, so the contacts' own bytes are:
    contact_bytes = (
        sent["upsert_body_bytes"] - requests * overhead - (sent["upsert_contacts"] - requests)
    )
    ratio = 1.0 if minimum == requests == 0 else (requests / minimum if minimum else None)
    return {
        "ok": run.exit_code == 0,
        "run_id": run.run_id,
        "total_wall_seconds": round(run.wall_seconds, 3),
        "dagster_cpu_seconds": round(run.cpu_seconds, 3),
        "peak_rss_mb": round(run.peak_rss_bytes / 1e6, 1),
        "sandbox_cpu_seconds": round(run.sandbox_cpu_seconds, 3),
        # The client waits for every answer, so this much of the wall is the sandbox's own work.
        "sandbox_handling_seconds": round(sent["handling_seconds"], 3),
        "sandbox_upsert_handling_seconds": round(sent["upsert_handling_seconds"], 3),
        "sandbox_share_of_wall": round(sent["handling_seconds"] / run.wall_seconds, 3),
        "stages": run.stages,
        "contacts_expected": expected["contacts_expected"],
        "contacts_sent": sent["upsert_contacts"],
        "contacts_exact": sent["upsert_contacts"] == expected["contacts_expected"],
        "upsert_requests": requests,
        "min_upsert_requests": minimum,
        "upsert_ratio": None if ratio is None else round(ratio, 2),
        "bytes_sent": sent["body_bytes"],
        "upsert_bytes_sent": sent["upsert_body_bytes"],
        "contact_json_bytes_sent": contact_bytes,
        "contact_json_bytes_expected": expected["contact_json_bytes_expected"],
        "requests": sent["requests"],
        "requests_by_method": sent["requests_by_method"],
        "list_contact_count": sent["list_contact_count"],
        "pipeline_reported": {
            k: run.pipeline[k]
            for k in ("upserted", "created", "updated", "removed", "planned_unchanged")
            if k in run.pipeline
        },
        **run.extra,
    }


# -- report -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    import dagster

    return {
        "cpus": os.cpu_count(),
        "memory_total_gb": None if memory is None else round(memory / 1e9, 1),
        "python": platform.python_version(),
        "polars": pl.__version__,
        "dagster": dagster.__version__,
        "platform": platform.platform(),
    }


def targets(profiles: int, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target of the issue: the goal, what was measured and whether it is met."""
    initial, unchanged, changed = runs["initial"], runs["no_change"], runs["change"]
    found: dict[str, dict[str, Any]] = {
        "upsert_ratio": {
            "target": 1.0,
            "measured": initial["upsert_ratio"],
            "met": initial["upsert_ratio"] == 1.0 and changed["upsert_ratio"] == 1.0,
        },
        "no_change_sends_zero": {
            "target": 0,
            "measured": unchanged["contacts_sent"],
            "met": unchanged["contacts_sent"] == 0 and unchanged["upsert_requests"] == 0,
        },
        "change_sends_exactly_changed": {
            "target": changed["contacts_expected"],
            "measured": changed["contacts_sent"],
            "met": changed["contacts_exact"],
        },
    }
    if profiles in WALL_TARGETS:
        goal = WALL_TARGETS[profiles]
        wall = initial["total_wall_seconds"]
        found["initial_wall_seconds"] = {"target": goal, "measured": wall, "met": wall < goal}
    if profiles in RSS_TARGETS:
        goal_mb = RSS_TARGETS[profiles] / 1e6
        rss = max(r["peak_rss_mb"] for r in runs.values())
        found["peak_rss_mb"] = {"target": goal_mb, "measured": rss, "met": rss < goal_mb}
    return found


def print_human(result: dict[str, Any]) -> None:
    print(f"\nBenchmark: {result['profiles']:,} profiles, machine {result['machine']}")
    for name, run in result["runs"].items():
        print(
            f"\n== {name}: {'ok' if run['ok'] else 'FAILED'}  wall {run['total_wall_seconds']}s"
            f"  cpu {run['dagster_cpu_seconds']}s  peak RSS {run['peak_rss_mb']} MB"
            f"  sandbox cpu {run['sandbox_cpu_seconds']}s"
            f" (answering: {run['sandbox_handling_seconds']}s of the wall)"
        )
        print(f"   {'stage':<20}{'wall s':>9}{'cpu s':>9}{'rss MB':>9}{'sandbox cpu':>13}")
        for stage, figures in run["stages"].items():
            cells = [
                figures.get(k)
                for k in (
                    "wall_seconds",
                    "cpu_seconds",
                    "sampled_peak_rss_mb",
                    "sandbox_cpu_seconds",
                )
            ]
            print(
                f"   {stage:<20}"
                + "".join(f"{'' if v is None else v:>9}" for v in cells[:3])
                + f"{'' if cells[3] is None else cells[3]:>13}"
            )
        print(
            f"   contacts sent {run['contacts_sent']:,} (expected {run['contacts_expected']:,}), "
            f"upserts {run['upsert_requests']} (minimum {run['min_upsert_requests']}), "
            f"{run['bytes_sent']:,} bytes in {run['requests']} requests"
        )
    print("\nTargets:")
    for name, target in result["targets"].items():
        mark = "met" if target["met"] else "MISSED"
        print(f"   {name}: {target['measured']} (target {target['target']}) {mark}")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sg-bench-"))
    ws = Workspace(root)
    generated = time.perf_counter()
    profile_file = prepare_workspace(root, args.profiles, args.seed, args.format)
    generated = time.perf_counter() - generated
    runs: dict[str, dict[str, Any]] = {}
    profile_dir = Path(args.py_spy).resolve() if args.py_spy else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    try:
        with SandboxProcess(
            ws.data / "destinations.yaml", ws.logs / "sandbox.log", args.job_delay
        ) as sandbox:
            print(f"sandbox pid {sandbox.pid} at {sandbox.base_url}; work dir {root}", flush=True)
            first = measure_run("initial", ws, sandbox, args.poll_interval, profile_dir)
            runs["initial"] = summarize(first, expectation(ws, None, no_change=False))
            again = measure_run("no_change", ws, sandbox, args.poll_interval, profile_dir)
            runs["no_change"] = summarize(again, expectation(ws, None, no_change=True))
            changed_ids = change_profiles(profile_file, args.change_share, args.seed + 1)
            changed = measure_run("change", ws, sandbox, args.poll_interval, profile_dir)
            changed.extra = {
                "change_share": args.change_share,
                "profiles_changed": changed_ids.len(),
                "changed_field": CHANGED_FIELD,
            }
            runs["change"] = summarize(changed, expectation(ws, changed_ids, no_change=False))
            for run in (first, again, changed):
                if run.exit_code:
                    tail = run.log.read_text(errors="replace").splitlines()[-15:]
                    print(f"\n{run.name} FAILED (exit {run.exit_code}):", *tail, sep="\n  ")
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "profiles": args.profiles,
        "seed": args.seed,
        "profile_format": args.format,
        "profile_generation_seconds": round(generated, 3),
        "destination": DESTINATION,
        "segment_rule": SEGMENT_RULE,
        "profiled_with_py_spy": profile_dir is not None,
        "command": " ".join(["python -m dagster", *DAGSTER_ARGS[:-3], "'*'", *DAGSTER_ARGS[-2:]]),
        "sandbox": {
            "job_delay_seconds": args.job_delay,
            "poll_interval_seconds": args.poll_interval,
        },
        "machine": machine(),
        "method": {
            "total_wall": "monotonic clock around the Dagster CLI subprocess (start-up included)",
            "stage_wall": "STEP_START to STEP_SUCCESS timestamps from the run's event log",
            "stage_cpu": f"/proc/<pid>/stat of the Dagster process tree sampled every "
            f"{SAMPLE_SECONDS}s, interpolated at the step boundaries",
            "cpu_and_peak_rss": "os.wait4 rusage of the Dagster process",
            "sandbox": "separate process; CPU from /proc/<pid>/stat, traffic from "
            "GET /sandbox/stats",
        },
        "runs": runs,
    }
    result["targets"] = targets(args.profiles, runs) if len(runs) == 3 else {}
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sendgrid_pipeline_tests.devkit.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--profiles", type=int, default=100_000, help="profiles to generate")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument(
        "--change-share", type=float, default=0.01, help="share of profiles changed (0.01 = 1%%)"
    )
    parser.add_argument("--job-delay", type=float, default=0.05, help="sandbox job delay (s)")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="first job poll wait")
    parser.add_argument("--work-dir", help="use (and keep) this directory instead of a temp one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="profile each Dagster run with py-spy into DIR/<run>.svg (timings then include "
        "py-spy's overhead; use them for shares, not for the targets)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.profiles < 1 or not 0 < args.change_share <= 1:
        build_parser().error("--profiles must be >= 1 and --change-share in (0, 1]")
    result = run_benchmark(args)
    print_human(result)
    print(json.dumps(result, separators=(",", ":")))
    runs_ok = len(result["runs"]) == 3 and all(r["ok"] for r in result["runs"].values())
    correct = all(
        t["met"]
        for k, t in result["targets"].items()
        if k not in ("initial_wall_seconds", "peak_rss_mb")
    )
    return 0 if runs_ok and correct else 1


if __name__ == "__main__":
    sys.exit(main())
