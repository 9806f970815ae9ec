"""`make bench`: time one destination's export at N profiles, the way a user runs it.

Why this shape: the honest figure is the Dagster CLI as a separate process (start-up, code
location load, run storage and all) against a SendGrid sandbox in *another* process, so the
sandbox's CPU is not counted as ours and can be reported on its own. Four scenarios, in order,
on the same list and state:

1. ``initial``: an empty list; every accepted contact is sent.
2. ``no_change``: the same profiles again; nothing may be sent.
3. ``change``: a mapped field (``city``) changed on a share of the profiles (default 1%);
   exactly the contacts those profiles feed must be sent.
4. ``churn``: a share of the opted-in profiles (default 15%) opt out; exactly the contacts
   that leave the segment must be removed from the list, and nothing sent. With the fixed
   latency model the sandbox's jobs take ``--churn-job-delay`` seconds here (default 2), as
   SendGrid's take seconds, where the pipeline's shape (how many jobs, how it waits) matters.

``--latency realistic`` runs every scenario against the sandbox's realistic timing model
(job time by size, the account's queue, a round trip per request, per-endpoint rate limits,
lagging list counts; see sandbox/latency.py).

Each scenario is compared with a floor measured in the same run: (a) the same Dagster CLI
command materializing the same four-asset graph with bodies that do nothing (devkit/floor.py),
(b) the bare polars work the sync cannot avoid (read the profiles, evaluate the segment, encode
the contacts' JSON, diff against the stored state and write the changed state rows to SQLite),
and (c) the least time the scenario must wait on SendGrid: the minimum requests made one after
another, each a round trip of the model, with the fewest jobs queued in the account as they are
submitted (see minimum_wait). The
report gives wall / (a + b + c) for every scenario, and wall / (a + b) as well.

How each figure is obtained:

* total wall: monotonic clock around the ``dagster asset materialize`` subprocess;
* per-stage wall: STEP_START -> STEP_SUCCESS/STEP_FAILURE timestamps in the run's event log
  (read from the temporary DAGSTER_HOME); "startup" is launch -> first STEP_START, "teardown"
  last step end -> exit;
* CPU (total): ``os.wait4`` rusage of the Dagster process; CPU per stage: psutil samples of the
  process tree every 20 ms, interpolated at the step boundaries;
* peak RSS: ``ru_maxrss`` from ``os.wait4``;
* sandbox CPU: psutil, before and after; requests by kind, contacts and bytes: the sandbox's
  ``GET /sandbox/stats`` totals;
* waiting on SendGrid: the sandbox's ``wait_seconds`` (time answering each request, modelled
  round trip included, plus the time from each "come back later" answer, a pending job or a
  429, to the client's next request); working is the rest of the wall;
* minimum upsert requests: ``minimum_batches`` over the contacts that had to be sent,
  serialized exactly as the sync serializes them.

The last line printed is one JSON object; everything above it is for people.

    python -m sendgrid_pipeline_tests.devkit.bench --profiles 100000
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
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
import psutil
import yaml

from sendgrid_pipeline.sendgrid.batching import BODY_SUFFIX, body_prefix, minimum_batches
from sendgrid_pipeline_tests.devkit.dev import write_instance_config
from sendgrid_pipeline_tests.devkit.sample_data import generate_profiles, write_profiles
from sendgrid_pipeline_tests.devkit.sandbox.__main__ import command as sandbox_command
from sendgrid_pipeline_tests.devkit.sandbox.latency import PRESETS, JobQueue, LatencyModel

DESTINATION = "bench"
LIST_ID = "0b3c5e7a-be9c-4000-8000-00000000be9c"
SEGMENT = "opted_in"
SEGMENT_RULE = "email_opt_in"
OPT_IN = "email_opt_in"
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
SCENARIOS = ("initial", "no_change", "change", "churn")
REPO_ROOT = Path(__file__).resolve().parents[2]
FLOOR_MODULE = "sendgrid_pipeline_tests.devkit.floor"


def dagster_args(module: str) -> list[str]:
    select = "group:sendgrid_export"  # the export only: not the compliance assets
    return ["asset", "materialize", "-m", module, "--select", select, "--partition", DESTINATION]


DAGSTER_ARGS = dagster_args("sendgrid_pipeline.definitions")
# What SendGrid lets one request carry, as the client uses it (see the report's method).
SEARCH_EMAILS_PER_REQUEST = 100  # POST /v3/marketing/contacts/search/emails
REMOVE_IDS_PER_REQUEST = 100  # DELETE /v3/marketing/lists/{id}/contacts?contact_ids=
# Targets from the performance issues, by profile count and scenario.
TARGETS: dict[tuple[int, str], dict[str, float]] = {
    (100_000, "churn"): {"wall_seconds": 15.0, "requests_over_minimum": 3.0},
    (1_000_000, "initial"): {"wall_seconds": 9.0, "peak_rss_mb": 800.0},
    (1_000_000, "no_change"): {"wall_seconds": 5.0},
    (1_000_000, "change"): {"wall_seconds": 5.0},
}
CHURN_TARGET_JOB_DELAY = 2.0  # the 100k churn target is for jobs that take 2 s
FLOOR_RATIO_TARGET = 1.5
SAMPLE_SECONDS = 0.02


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
    def floor_home(self) -> Path:
        return self.root / "floor_dagster_home"

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
    def floor_state(self) -> Path:
        return self.root / "floor_state.sqlite"

    @property
    def contacts_file(self) -> Path:
        """Where the IO manager keeps the destination's sendgrid_contacts partition."""
        return self.storage / "sendgrid_contacts" / f"{DESTINATION}.parquet"


def create_instance_storage(dagster_home: Path) -> None:
    """Create the instance's run, event and schedule databases before anything is timed.

    A user's DAGSTER_HOME has them already; without this the first scenario (and only it)
    would pay for creating them, while the floor, the faster of two runs, never does.
    """
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_run_records(limit=1)
        instance.all_instigator_state()
        instance.event_log_storage.get_asset_records()


def prepare_workspace(root: Path, profiles: int, seed: int, file_format: str) -> Path:
    """Write profiles, one segment and one destination sized to fit; return the profile file."""
    ws = Workspace(root)
    for folder in (ws.profiles, ws.storage, ws.state, ws.logs):
        folder.mkdir(parents=True, exist_ok=True)
    for home in (ws.dagster_home, ws.floor_home):
        write_instance_config(home)
        create_instance_storage(home)
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


def churn_profiles(path: Path, share: float, seed: int) -> pl.Series:
    """Opt a random share of the opted-in profiles out; return their customer_ids."""
    frame = read_profiles(path)
    opted_in = np.flatnonzero(frame[OPT_IN].fill_null(False).to_numpy())
    count = max(1, round(len(opted_in) * share)) if len(opted_in) else 0
    rows = np.random.default_rng(seed).choice(opted_in, size=count, replace=False)
    picked = pl.int_range(pl.len()).is_in(pl.Series(rows, dtype=pl.Int64).implode())
    left = frame.with_columns(
        pl.when(picked).then(pl.lit(False)).otherwise(pl.col(OPT_IN)).alias(OPT_IN)
    )
    write_profiles(left, path)
    return frame["customer_id"].gather(rows)


def read_profiles(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    from sendgrid_pipeline_tests.devkit.sample_data import read_profiles_csv

    return read_profiles_csv(path)


# -- process measurement (psutil) -------------------------------------------------------------
def _usage(process: psutil.Process) -> tuple[float, int] | None:
    """(CPU seconds incl. reaped children, RSS bytes) of one process, or None once it is gone."""
    try:
        with process.oneshot():
            times = process.cpu_times()
            rss = process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return times.user + times.system + times.children_user + times.children_system, rss


def tree_usage(process: psutil.Process) -> tuple[float, int] | None:
    """CPU seconds of a process and its live descendants, and the RSS of the process itself.

    Dagster forks helpers (compute-log tailing); a forked child's RSS counts the pages it
    shares with its parent, so summing RSS over the tree would double count.
    """
    root = _usage(process)
    if root is None:
        return None
    cpu, rss = root
    try:
        children = process.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        children = []
    for child in children:
        usage = _usage(child)
        if usage is not None:
            cpu += usage[0]
    return cpu, rss


def process_cpu_seconds(pid: int) -> float | None:
    try:
        usage = _usage(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return None
    return None if usage is None else usage[0]


class Sampler(threading.Thread):
    """Samples (time, CPU, RSS) of a few processes so CPU can be split by stage afterwards."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.processes: dict[str, psutil.Process | None] = {}
        for name, pid in pids.items():
            try:
                self.processes[name] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                self.processes[name] = None
        self.samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in pids}
        self._stop_event = threading.Event()
        self._execed: set[str] = set()
        self._own_cmdline = psutil.Process().cmdline()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(SAMPLE_SECONDS):
                return

    def sample(self) -> None:
        now = time.time()
        for name, process in self.processes.items():
            if process is None:
                continue
            if name not in self._execed:
                try:
                    if process.cmdline() == self._own_cmdline:
                        continue  # forked but not yet exec'd: it still shows the bench's memory
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                self._execed.add(name)
            usage = tree_usage(process)
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

    def __init__(self, destinations: Path, log: Path, job_delay: float, latency: str) -> None:
        self.command = sandbox_command(API_KEY, destinations, job_delay=job_delay, latency=latency)
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

    def latency(self, changes: dict[str, Any] | None = None) -> LatencyModel:
        """The sandbox's timing model; with `changes`, change it first (PUT /sandbox/latency)."""
        request = urllib.request.Request(
            f"{self.base_url}/sandbox/latency",
            data=None if changes is None else json.dumps(changes).encode(),
            method="GET" if changes is None else "PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return LatencyModel().with_changes(json.loads(response.read()))

    def cpu_seconds(self) -> float:
        cpu = process_cpu_seconds(self.pid)
        return cpu if cpu is not None else float(self.stats()["process_cpu_seconds"])


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


def dagster_command(module: str = "sendgrid_pipeline.definitions") -> list[str]:
    """The CLI a user would type, from this interpreter's environment."""
    script = Path(sys.executable).with_name("dagster")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "dagster"]
    return [*prefix, *dagster_args(module)]


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


PY_SPY_SUFFIX = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}


def py_spy_command(output: Path, output_format: str = "flamegraph") -> list[str]:
    """`py-spy record` around the CLI: wall-clock samples (idle frames kept).

    "raw" writes collapsed stacks (one line per stack and its sample count), which is what
    the shares in docs/BENCHMARKS.md are summed from.
    """
    found = Path(sys.executable).with_name("py-spy")
    executable = str(found) if found.exists() else shutil.which("py-spy")
    if executable is None:
        raise SystemExit("--py-spy needs py-spy: pip install py-spy")
    return [
        executable,
        "record",
        "--subprocesses",
        "--idle",
        "--rate",
        "100",
        "--format",
        output_format,
        "-o",
        str(output),
    ]


def measure_run(
    name: str,
    ws: Workspace,
    sandbox: SandboxProcess,
    poll_interval: float,
    profile_dir: Path | None = None,
    profile_format: str = "flamegraph",
) -> RunMeasure:
    """Run the CLI once and measure it; the events are read back from the run storage."""
    log = ws.logs / f"{name}.log"
    command = dagster_command()
    if profile_dir is not None:
        output = profile_dir / f"{name}.{PY_SPY_SUFFIX[profile_format]}"
        command = [*py_spy_command(output, profile_format), "--", *command]
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


def _delta_counts(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = set(before) | set(after)
    changed = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)}
    return {k: v for k, v in changed.items() if v}


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
        "wait_seconds",
    )
    delta: dict[str, Any] = {key: after[key] - before[key] for key in keys}
    delta["requests_by_method"] = _delta_counts(
        before["requests_by_method"], after["requests_by_method"]
    )
    delta["requests_by_kind"] = _delta_counts(before["requests_by_kind"], after["requests_by_kind"])
    delta["rate_limited"] = after["faults"].get("rate_limit", 0) - before["faults"].get(
        "rate_limit", 0
    )
    delta["list_contact_count"] = after["list_sizes"].get(LIST_ID)
    return delta


# -- the floor --------------------------------------------------------------------------------
def measure_dagster_floor(ws: Workspace, runs: int) -> dict[str, Any]:
    """(a): the same CLI command materializing the four-asset graph with empty bodies."""
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(ws.floor_home), DAGSTER_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    walls: list[float] = []
    for number in range(runs):
        log = ws.logs / f"floor_dagster_{number}.log"
        with log.open("w") as out:
            started = time.perf_counter()
            code = subprocess.call(
                dagster_command(FLOOR_MODULE), env=env, cwd=ws.root, stdout=out, stderr=out
            )
            walls.append(time.perf_counter() - started)
        if code:
            tail = log.read_text(errors="replace").splitlines()[-10:]
            raise RuntimeError("the Dagster floor run failed:\n" + "\n".join(tail))
    return {"runs": [round(w, 3) for w in walls], "seconds": round(min(walls), 3)}


def measure_polars_floor(ws: Workspace, profile_file: Path) -> dict[str, float]:
    """(b): the bare work a sync of this destination cannot avoid, timed in this process.

    Read the profiles, evaluate the segment, encode each contact's JSON, read the stored state,
    find what changed, and write the changed state rows (SQLite, one transaction).
    """
    times: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        times[name] = round(now - mark, 4)
        mark = now

    profiles = pl.read_parquet(profile_file, columns=[OPT_IN, *FIELD_MAPPING])
    lap("read_profiles")
    members = (
        profiles.lazy()
        .filter(pl.col(OPT_IN).fill_null(False))
        .with_columns(pl.col("email").str.strip_chars().str.to_lowercase())
        .filter(pl.col("email").str.contains("@"))
        .unique("email", keep="first", maintain_order=True)
        .collect()
    )
    lap("evaluate_segment")
    desired = members.select(
        "email",
        pl.struct([pl.col(c).fill_null("") for c in FIELD_MAPPING]).struct.json_encode().alias("j"),
    ).with_columns(pl.col("j").hash().reinterpret(signed=True).alias("h"))
    lap("encode_json")
    with sqlite3.connect(ws.floor_state) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS members (email TEXT PRIMARY KEY, h INTEGER)")
        stored = pl.DataFrame(
            db.execute("SELECT email, h FROM members").fetchall(),
            schema={"email": pl.String, "h": pl.Int64},
            orient="row",
        )
        lap("read_state")
        upserts = desired.join(stored, on=["email", "h"], how="anti")
        leavers = stored.join(desired, on="email", how="anti")
        lap("diff")
        db.executemany(
            "INSERT INTO members (email, h) VALUES (?, ?) "
            "ON CONFLICT(email) DO UPDATE SET h = excluded.h",
            upserts.select("email", "h").iter_rows(),
        )
        db.executemany("DELETE FROM members WHERE email = ?", leavers.select("email").iter_rows())
    lap("write_state")
    times["seconds"] = round(sum(times.values()), 4)
    times["rows_written"] = upserts.height + leavers.height
    return times


# -- what had to be sent ----------------------------------------------------------------------
def serialized(contacts: pl.DataFrame) -> pl.Series:
    """Each contact's JSON exactly as the sync asset builds it."""
    from sendgrid_pipeline.transform import contact_json

    return contact_json(contacts, list(FIELD_MAPPING))


def expectation(contacts: pl.DataFrame, previous: pl.DataFrame | None) -> dict[str, Any]:
    """What the run must send and remove, and the fewest requests and jobs that can do it.

    `contacts`: the destination's contacts after the run; `previous`: before it (None: the
    first sync, of an empty list). A contact must be sent when its JSON is not what was sent
    before under its email: new, changed, or another profile's now that the one kept before
    left (duplicate emails keep the smallest customer_id). A contact must be removed when its
    email is no longer among the contacts.
    """
    encoded = contacts.with_columns(serialized(contacts).alias("contact_json"))
    if previous is None:
        sent = encoded
        removed = 0
    else:
        before = previous.select("email", serialized(previous).alias("contact_json"))
        sent = encoded.join(before, on=["email", "contact_json"], how="anti")
        removed = previous.join(contacts, on="email", how="anti").height
    total_bytes = int(sent["contact_json"].str.len_bytes().sum() or 0)
    upserts = minimum_batches(sent.height, total_bytes, [LIST_ID])
    searches = math.ceil(removed / SEARCH_EMAILS_PER_REQUEST)
    removals = math.ceil(removed / REMOVE_IDS_PER_REQUEST)
    upsert_jobs = [sent.height // upserts + (i < sent.height % upserts) for i in range(upserts)]
    removal_jobs = [
        min(REMOVE_IDS_PER_REQUEST, removed - i * REMOVE_IDS_PER_REQUEST) for i in range(removals)
    ]
    # Read the list's count before and after; search the leavers' ids (unless the state holds
    # them: see summarize); send; one status read per job. A first sync also reads the list's
    # members once (export, status, download).
    minimum = 2 + upserts + searches + removals + upserts + removals
    if previous is None:
        minimum += 3
    return {
        "contacts_expected": sent.height,
        "contact_json_bytes_expected": total_bytes,
        "min_upsert_requests": upserts,
        "removals_expected": removed,
        "list_contact_count_expected": contacts.height,
        "min_requests": minimum,
        "min_searches": searches,
        "min_jobs": upsert_jobs + removal_jobs,
        "first_sync": previous is None,
    }


def minimum_wait(model: LatencyModel, searches: int, jobs: list[int], first_sync: bool) -> float:
    """The least time a sync that makes only the minimum requests, one after another, spends
    waiting on SendGrid under `model`: round trips, and jobs in the account's queue.

    Read the list's count; on a first sync read its members (export, wait, status, download);
    search the leavers' ids; submit every job; wait for the last; read its status and the
    count again. Jobs are queued as they are submitted, so they overlap the later round trips.
    """
    trip = model.request_seconds
    queue = JobQueue(model)
    now = trip  # the count
    if first_sync:
        now += trip
        now = queue.schedule(now, 0) + 2 * trip  # export of an empty list, status, download
    now += searches * trip
    done = now
    for items in jobs:
        now += trip
        done = queue.schedule(now, items)
    return max(done, now) + 2 * trip if jobs else now + trip


def summarize(run: RunMeasure, expected: dict[str, Any], model: LatencyModel) -> dict[str, Any]:
    sent = run.sandbox
    minimum = expected["min_upsert_requests"]
    requests = sent["upsert_requests"]
    overhead = len(body_prefix([LIST_ID])) + len(BODY_SUFFIX)
    # body = prefix + contacts joined by commas + suffix, so the contacts' own bytes are:
    contact_bytes = (
        sent["upsert_body_bytes"] - requests * overhead - (sent["upsert_contacts"] - requests)
    )
    ratio = 1.0 if minimum == requests == 0 else (requests / minimum if minimum else None)
    wait = min(sent["wait_seconds"], run.wall_seconds)
    removed = run.pipeline.get("removed")
    min_requests = expected["min_requests"]
    by_kind = sent["requests_by_kind"]
    # Leavers' ids already in the state (recorded by a reconcile) need no search.
    ids_known = not by_kind.get("search_emails") and not by_kind.get("search_sgql")
    if ids_known:
        min_requests -= expected["min_searches"]
    return {
        "ok": run.exit_code == 0,
        "run_id": run.run_id,
        "total_wall_seconds": round(run.wall_seconds, 3),
        "waiting_on_sendgrid_seconds": round(wait, 3),
        "working_seconds": round(run.wall_seconds - wait, 3),
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
        "removals_expected": expected["removals_expected"],
        "removed_reported": removed,
        "list_contact_count": sent["list_contact_count"],
        "list_contact_count_expected": expected["list_contact_count_expected"],
        "list_exact": sent["list_contact_count"] == expected["list_contact_count_expected"],
        "bytes_sent": sent["body_bytes"],
        "upsert_bytes_sent": sent["upsert_body_bytes"],
        "contact_json_bytes_sent": contact_bytes,
        "contact_json_bytes_expected": expected["contact_json_bytes_expected"],
        "requests": sent["requests"],
        "min_requests": min_requests,
        "requests_over_minimum": round(sent["requests"] / min_requests, 2),
        "leaver_ids_known_before": ids_known and expected["removals_expected"] > 0,
        "requests_by_kind": sent["requests_by_kind"],
        "requests_by_method": sent["requests_by_method"],
        "rate_limited_requests": sent["rate_limited"],
        "latency_model": model.as_dict(),
        "sendgrid_minimum_wait_seconds": round(
            minimum_wait(
                model,
                0 if ids_known else expected["min_searches"],
                expected["min_jobs"],
                expected["first_sync"],
            ),
            3,
        ),
        "pipeline_reported": {
            k: run.pipeline[k]
            for k in (
                "upserted",
                "created",
                "updated",
                "removed",
                "planned_unchanged",
                "reconciled",
                "jobs",
            )
            if k in run.pipeline
        },
        **run.extra,
    }


def add_floor(run: dict[str, Any], dagster_floor: float, polars_floor: dict[str, Any]) -> None:
    """The floor of one scenario, and the pipeline's wall over it."""
    wait = run["sendgrid_minimum_wait_seconds"]
    base = dagster_floor + polars_floor["seconds"]
    total = base + wait
    run["floor"] = {
        "dagster_noop_seconds": dagster_floor,
        "polars_work_seconds": polars_floor["seconds"],
        "polars_work": polars_floor,
        "sendgrid_minimum_wait_seconds": wait,
        "seconds": round(total, 3),
    }
    run["pipeline_over_floor"] = round(run["total_wall_seconds"] / total, 2)
    run["pipeline_over_floor_without_wait"] = round(run["total_wall_seconds"] / base, 2)


# -- report -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import dagster

    return {
        "cpus": os.cpu_count(),
        "memory_total_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
        "polars": pl.__version__,
        "dagster": dagster.__version__,
        "platform": platform.platform(),
        # Other work on the machine inflates every figure, the floor's included.
        "load_average_1_5_15_at_end": [round(x, 2) for x in psutil.getloadavg()],
    }


def _target(goal: float, measured: float | None, note: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {
        "target": goal,
        "measured": measured,
        "met": measured is not None and measured <= goal,
    }
    if note:
        found["note"] = note
    return found


def targets(profiles: int, latency: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target of the issues that applies to this run: goal, measured, met."""
    found: dict[str, dict[str, Any]] = {}
    ratios = {name: run["upsert_ratio"] for name, run in runs.items()}
    found["upsert_ratio"] = {
        "target": 1.0,
        "measured": ratios,
        "met": all(r == 1.0 for r in ratios.values()),
    }
    if "no_change" in runs:
        unchanged = runs["no_change"]
        found["no_change_sends_zero"] = {
            "target": 0,
            "measured": unchanged["contacts_sent"],
            "met": unchanged["contacts_sent"] == 0 and unchanged["upsert_requests"] == 0,
        }
    if "change" in runs:
        changed = runs["change"]
        found["change_sends_exactly_changed"] = {
            "target": changed["contacts_expected"],
            "measured": changed["contacts_sent"],
            "met": changed["contacts_exact"],
        }
    if "churn" in runs:
        churn = runs["churn"]
        found["churn_removes_exactly_the_leavers"] = {
            "target": churn["list_contact_count_expected"],
            "measured": churn["list_contact_count"],
            "met": churn["list_exact"] and churn["contacts_exact"],
        }
    floors = {n: r["pipeline_over_floor"] for n, r in runs.items() if "pipeline_over_floor" in r}
    if floors:
        found["pipeline_over_floor"] = {
            "target": FLOOR_RATIO_TARGET,
            "measured": floors,
            "met": all(v <= FLOOR_RATIO_TARGET for v in floors.values()),
        }
    if latency != "fixed":
        return found  # the timed targets are for the fixed model
    for (size, scenario), goals in TARGETS.items():
        if size != profiles or scenario not in runs:
            continue
        run = runs[scenario]
        if scenario == "churn":
            delay = run["latency_model"]["job_base_seconds"]
            if delay != CHURN_TARGET_JOB_DELAY:
                continue
        for figure, goal in goals.items():
            measured = run["total_wall_seconds" if figure == "wall_seconds" else figure]
            found[f"{scenario}_{figure}"] = _target(goal, measured)
    return found


def print_human(result: dict[str, Any]) -> None:
    print(
        f"\nBenchmark: {result['profiles']:,} profiles, latency {result['latency']}, "
        f"machine {result['machine']}"
    )
    floor = result.get("dagster_floor")
    if floor:
        print(f"Dagster floor (no-op graph, same CLI): {floor['seconds']}s (runs {floor['runs']})")
    for name, run in result["runs"].items():
        print(
            f"\n== {name}: {'ok' if run['ok'] else 'FAILED'}  wall {run['total_wall_seconds']}s"
            f" (waiting on SendGrid {run['waiting_on_sendgrid_seconds']}s, working "
            f"{run['working_seconds']}s)  cpu {run['dagster_cpu_seconds']}s  peak RSS "
            f"{run['peak_rss_mb']} MB  sandbox cpu {run['sandbox_cpu_seconds']}s"
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
            f"removed {run['removed_reported']} (expected {run['removals_expected']:,}), "
            f"list {run['list_contact_count']:,} (expected {run['list_contact_count_expected']:,})"
        )
        print(
            f"   requests {run['requests']} (minimum {run['min_requests']}, "
            f"{run['requests_over_minimum']}x): {run['requests_by_kind']}"
        )
        if "floor" in run:
            f = run["floor"]
            print(
                f"   floor {f['seconds']}s = dagster {f['dagster_noop_seconds']} + polars "
                f"{f['polars_work_seconds']} + SendGrid wait {f['sendgrid_minimum_wait_seconds']}"
                f"; pipeline/floor {run['pipeline_over_floor']} (without the wait allowance "
                f"{run['pipeline_over_floor_without_wait']})"
            )
    print("\nTargets:")
    for name, target in result["targets"].items():
        mark = "met" if target["met"] else "MISSED"
        print(f"   {name}: {target['measured']} (target {target['target']}) {mark}")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sg-bench-"))
    ws = Workspace(root)
    load_at_start = [round(x, 2) for x in psutil.getloadavg()]
    generated = time.perf_counter()
    profile_file = prepare_workspace(root, args.profiles, args.seed, args.format)
    generated = time.perf_counter() - generated
    runs: dict[str, dict[str, Any]] = {}
    measures: list[RunMeasure] = []
    profile_dir = Path(args.py_spy).resolve() if args.py_spy else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in SCENARIOS if s in args.scenarios]
    dagster_floor: dict[str, Any] | None = None
    try:
        if args.floor_runs:
            dagster_floor = measure_dagster_floor(ws, args.floor_runs)
            print(f"Dagster floor: {dagster_floor}", flush=True)
        with SandboxProcess(
            ws.data / "destinations.yaml", ws.logs / "sandbox.log", args.job_delay, args.latency
        ) as sandbox:
            print(f"sandbox pid {sandbox.pid} at {sandbox.base_url}; work dir {root}", flush=True)
            previous: pl.DataFrame | None = None
            for name in wanted:
                if name in ("initial", "no_change"):
                    changed = None
                elif name == "change":
                    changed = change_profiles(profile_file, args.change_share, args.seed + 1)
                else:
                    changed = churn_profiles(profile_file, args.churn_share, args.seed + 2)
                    if args.latency == "fixed":
                        sandbox.latency({"job_delay_seconds": args.churn_job_delay})
                model = sandbox.latency()
                measure = measure_run(
                    name, ws, sandbox, args.poll_interval, profile_dir, args.py_spy_format
                )
                measures.append(measure)
                if name == "change":
                    measure.extra = {
                        "change_share": args.change_share,
                        "profiles_changed": changed.len() if changed is not None else 0,
                        "changed_field": CHANGED_FIELD,
                    }
                elif name == "churn":
                    measure.extra = {
                        "churn_share": args.churn_share,
                        "profiles_left": changed.len() if changed is not None else 0,
                    }
                contacts = pl.read_parquet(ws.contacts_file)
                runs[name] = summarize(measure, expectation(contacts, previous), model)
                previous = contacts
                if dagster_floor is not None:
                    add_floor(
                        runs[name],
                        dagster_floor["seconds"],
                        measure_polars_floor(ws, profile_file),
                    )
            for run in measures:
                if run.exit_code:
                    tail = run.log.read_text(errors="replace").splitlines()[-15:]
                    print(f"\n{run.name} FAILED (exit {run.exit_code}):", *tail, sep="\n  ")
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    command = " ".join(["dagster", *DAGSTER_ARGS])
    result = {
        "profiles": args.profiles,
        "seed": args.seed,
        "profile_format": args.format,
        "profile_generation_seconds": round(generated, 3),
        "destination": DESTINATION,
        "segment_rule": SEGMENT_RULE,
        "latency": args.latency,
        "profiled_with_py_spy": profile_dir is not None,
        "command": command,
        "floor_command": command.replace("sendgrid_pipeline.definitions", FLOOR_MODULE),
        "sandbox": {
            "job_delay_seconds": args.job_delay,
            "churn_job_delay_seconds": args.churn_job_delay if args.latency == "fixed" else None,
            "poll_interval_seconds": args.poll_interval,
        },
        "dagster_floor": dagster_floor,
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "method": {
            "total_wall": "monotonic clock around the Dagster CLI subprocess (start-up included)",
            "stage_wall": "STEP_START to STEP_SUCCESS timestamps from the run's event log",
            "stage_cpu": f"psutil samples of the Dagster process tree every {SAMPLE_SECONDS}s, "
            "interpolated at the step boundaries",
            "cpu_and_peak_rss": "os.wait4 rusage of the Dagster process",
            "waiting_on_sendgrid": "the sandbox's answer times plus the gaps after each pending "
            "job status or 429 until the client's next request",
            "floor": "no-op four-asset graph through the same CLI (fastest of the floor runs) + "
            "bare polars work + the least wait on SendGrid (minimum requests in sequence, the "
            "fewest jobs queued as submitted)",
            "sandbox": "separate process; CPU from psutil, traffic from GET /sandbox/stats",
        },
        "runs": runs,
    }
    result["targets"] = targets(args.profiles, args.latency, runs)
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
    parser.add_argument(
        "--churn-share",
        type=float,
        default=0.15,
        help="share of the opted-in profiles that opt out in the churn scenario (0.15 = 15%%)",
    )
    parser.add_argument(
        "--latency",
        choices=PRESETS,
        default="fixed",
        help="the sandbox's timing model (fixed: --job-delay per job; realistic: see "
        "docs/BENCHMARKS.md)",
    )
    parser.add_argument("--job-delay", type=float, default=0.05, help="sandbox job delay (s)")
    parser.add_argument(
        "--churn-job-delay",
        type=float,
        default=CHURN_TARGET_JOB_DELAY,
        help="sandbox job delay in the churn scenario under the fixed model (s)",
    )
    parser.add_argument("--poll-interval", type=float, default=0.05, help="first job poll wait")
    parser.add_argument(
        "--scenarios",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}, run in that order (initial "
        "always first)",
    )
    parser.add_argument(
        "--floor-runs",
        type=int,
        default=2,
        help="runs of the no-op Dagster graph; the fastest is the floor (0: no floor)",
    )
    parser.add_argument("--work-dir", help="use (and keep) this directory instead of a temp one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="profile each Dagster run with py-spy into DIR/<run>.svg (timings then include "
        "py-spy's overhead; use them for shares, not for the targets)",
    )
    parser.add_argument(
        "--py-spy-format",
        choices=tuple(PY_SPY_SUFFIX),
        default="flamegraph",
        help="flamegraph (.svg), raw collapsed stacks (.txt) or speedscope (.json)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.profiles < 1 or not 0 < args.change_share <= 1 or not 0 < args.churn_share <= 1:
        parser.error("--profiles must be >= 1, --change-share and --churn-share in (0, 1]")
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or "initial" not in args.scenarios:
        parser.error(f"--scenarios: initial and any of {', '.join(SCENARIOS[1:])}")
    result = run_benchmark(args)
    print_human(result)
    print(json.dumps(result, separators=(",", ":")))
    runs_ok = len(result["runs"]) == len(set(args.scenarios)) and all(
        r["ok"] for r in result["runs"].values()
    )
    correctness = (
        "upsert_ratio",
        "no_change_sends_zero",
        "change_sends_exactly_changed",
        "churn_removes_exactly_the_leavers",
    )
    correct = all(t["met"] for k, t in result["targets"].items() if k in correctness)
    return 0 if runs_ok and correct else 1


if __name__ == "__main__":
    sys.exit(main())
