"""docker-compose.yml stays consistent with the binary: every trendflow command, flag
and TRENDFLOW_* variable it uses exists in `trendflow <command> --help` (there is no
container engine on the development machines, so the file is checked statically)."""

import re
import subprocess
from pathlib import Path

import yaml

from conftest import REPO, trendflow_bin

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def trendflow_services():
    return {name: s for name, s in COMPOSE["services"].items() if s.get("image") == "trendflow:local"}


def help_of(command):
    return subprocess.run([trendflow_bin(), command, "--help"], capture_output=True, text=True, check=True).stdout


def test_every_trendflow_service_uses_real_commands_flags_and_variables():
    services = trendflow_services()
    assert {"generate", "ingest", "loader", "trendflow"} <= services.keys()
    for name, service in services.items():
        command = service["command"]
        text = help_of(command[0])
        for flag in (a for a in command[1:] if a.startswith("--")):
            assert re.search(rf"\s{re.escape(flag)}\b", text), f"{name}: `trendflow {command[0]}` has no {flag}"
        for variable in service.get("environment", {}):
            if variable.startswith("TRENDFLOW_"):
                # Secret-bearing variables are listed without their value (`[env: NAME]`).
                assert re.search(rf"\[env: {variable}[=\]]", text), f"{name}: `trendflow {command[0]}` reads no {variable}"


def test_the_stack_is_complete_and_healthy_by_construction():
    services = COMPOSE["services"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller", "Kafka runs in KRaft mode"
    tested = re.search(r"<kafka.version>(.+)</kafka.version>", (REPO / "scripts/kafka/pom.xml").read_text()).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{tested}", "the compose broker is the version the tests run"
    assert {"kafka", "mongodb", "ingest", "loader", "trendflow", "dashboard"} <= services.keys()
    assert services["dashboard"]["environment"]["TRENDFLOW_FLIGHT_URI"] == "grpc://trendflow:50051"
    job = services["trendflow"]
    assert job["restart"] == "unless-stopped" and "/readyz" in " ".join(job["healthcheck"]["test"])
    assert job["environment"]["TRENDFLOW_MONGODB_URI"].startswith("mongodb://${MONGO_ROOT_USER}")
    assert "restart" not in services["loader"], "the loader is one-shot"


def test_no_credentials_in_the_compose_file():
    text = (REPO / "docker-compose.yml").read_text()
    example = (REPO / ".env.example").read_text()
    for variable in re.findall(r"\$\{(\w+)", text):
        assert re.search(rf"^{variable}=", example, re.M), f"{variable} is not documented in .env.example"
    assert "change-me" not in text


def test_the_images_run_as_non_root_users():
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = dockerfile.split("\nFROM ")
    assert len(stages) >= 2, "multi-stage build"
    assert re.search(r"^USER trendflow$", stages[-1], re.M)
    dashboard = (REPO / "dashboard" / "Dockerfile").read_text()
    assert re.search(r"^USER dashboard$", dashboard, re.M)
    pinned = (REPO / "dashboard" / "requirements.txt").read_text()
    assert all("==" in line for line in pinned.splitlines() if line and not line.startswith("#"))
