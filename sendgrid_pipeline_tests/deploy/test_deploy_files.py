"""The deployment reference stays true to the project: files it copies, modules it serves."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def dockerfile_lines() -> list[str]:
    return DOCKERFILE.read_text().replace("\\\n", " ").splitlines()


def test_every_file_the_dockerfile_copies_exists() -> None:
    copies = [line.split()[1:-1] for line in dockerfile_lines() if line.startswith("COPY ")]
    sources = [source for sources in copies for source in sources]
    assert sources and all((REPO / source).exists() for source in sources), sources


def test_the_dockerfile_serves_the_code_location_module() -> None:
    (command,) = [line for line in dockerfile_lines() if line.startswith("CMD ")]
    module = re.search(r'"--module-name", "([\w.]+)"', command)
    assert module and module.group(1) == "sendgrid_pipeline.definitions"
    assert importlib.util.find_spec(module.group(1)) is not None


def test_the_helm_values_serve_the_same_module_and_name_the_psycopg2_driver() -> None:
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "sendgrid_pipeline.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not docker_available(), reason="no Docker daemon on this machine")
def test_the_image_builds_and_loads_the_definitions() -> None:
    tag = "sendgrid-pipeline:test"
    subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "-t", tag, "."], cwd=REPO, check=True)
    subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            tag,
            "dagster",
            "definitions",
            "validate",
            "-m",
            "sendgrid_pipeline.definitions",
        ],
        check=True,
    )
