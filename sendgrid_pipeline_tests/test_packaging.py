"""What a deployment installs: the wheel built from pyproject.toml holds the product only.

The sandbox (an HTTP server), the sample-data generator, the benchmark, the demo and the dev
launcher live in `sendgrid_pipeline_tests.devkit` and must never ship.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER_IMPORTS = re.compile(r"^\s*(from|import)\s+(http\.server|socketserver|wsgiref)\b", re.M)


def test_the_wheel_holds_the_product_and_no_http_server(tmp_path: Path) -> None:
    # Built from a copy of the project (tests included), so no earlier build/ folder leaks in.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", ".dagster*", "artifacts", "build", "*.egg-info", "__pycache__", "data"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("sendgrid_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {n: archive.read(n).decode() for n in names if n.endswith(".py")}
        entry_points = next(
            (archive.read(n).decode() for n in names if n.endswith("entry_points.txt")), ""
        )
    assert {name.split("/")[0] for name in names} == {
        "sendgrid_pipeline",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert "sendgrid_pipeline/definitions.py" in names
    assert not [n for n in names if "devkit" in n or "sandbox" in n or "_tests" in n]
    assert not [n for n, text in sources.items() if SERVER_IMPORTS.search(text)]
    assert "devkit" not in entry_points
