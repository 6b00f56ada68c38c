"""deploy/docker-compose.yaml: valid against the Compose specification's schema, and
consistent with the Dockerfile and the service's settings (no Docker engine runs here)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from _dockerfile import parse

from megaload.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "docker-compose.yaml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICE = COMPOSE["services"]["megaload"]
ENV = {k: str(v) for k, v in SERVICE["environment"].items()}
DOCKERFILE = parse(REPO / "Dockerfile")
CONTAINER_ONLY_VARS = {"MEGALOAD_NPROC_PER_NODE"}


def _compose_schema_validator():
    jsonschema = pytest.importorskip("jsonschema")
    try:
        from importlib.resources import files

        text = (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (which ships the Compose specification's schema) is not installed")
    schema = json.loads(text)
    return jsonschema.validators.validator_for(schema)(schema)


def _seconds(duration: str) -> int:
    total = 0
    for number, unit in re.findall(r"(\d+)(h|m|s)", duration):
        total += int(number) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def test_valid_against_the_compose_specification():
    validator = _compose_schema_validator()
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert not errors, errors
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["megaload"]["stop_grace_periode"] = "300s"  # a typo the schema must catch
    assert list(validator.iter_errors(broken))


def test_builds_the_gpu_target_from_the_repository():
    build = SERVICE["build"]
    assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).is_file()
    assert build["target"] == "gpu" and DOCKERFILE.stage("gpu")
    default_base = re.fullmatch(r"\$\{BASE_IMAGE:-(.+)\}", build["args"]["BASE_IMAGE"]).group(1)
    assert default_base == DOCKERFILE.global_args["BASE_IMAGE"]
    assert SERVICE["image"].endswith(":" + build["target"])


def test_publishes_the_services_port():
    port = Settings.model_fields["port"].default
    assert ENV["MEGALOAD_PORT"] == str(port)
    (mapping,) = SERVICE["ports"]
    assert mapping.rsplit(":", 1)[1] == str(port)
    assert DOCKERFILE.stage("gpu").last("EXPOSE").args == str(port)


def test_environment_names_are_settings_and_validate(tmp_path):
    prefix = Settings.model_config["env_prefix"]
    known = {prefix + name.upper() for name in Settings.model_fields} | CONTAINER_ONLY_VARS
    assert set(ENV) <= known, set(ENV) - known
    values = {}
    for key, value in ENV.items():
        if key in CONTAINER_ONLY_VARS:
            continue
        if key in ("MEGALOAD_CHECKPOINT_ROOTS", "MEGALOAD_SAVE_ROOTS"):
            here = []
            for root in value.split(":"):
                (tmp_path / root.strip("/")).mkdir(exist_ok=True)
                here.append(str(tmp_path / root.strip("/")))
            value = ":".join(here)
        if key == "MEGALOAD_TOKEN_FILE":
            (tmp_path / "token").write_text("a-token-of-sufficient-length-0123")
            value = str(tmp_path / "token")
        values[key[len(prefix):].lower()] = value
    settings = Settings(**values)
    assert settings.device == "cuda" and settings.backend == "nccl" and settings.token is not None


def test_checkpoints_read_only_and_saves_writable_at_the_roots():
    mounts = {v["target"]: v for v in SERVICE["volumes"]}
    checkpoint_roots = ENV["MEGALOAD_CHECKPOINT_ROOTS"].split(":")
    save_roots = ENV["MEGALOAD_SAVE_ROOTS"].split(":")
    for root in checkpoint_roots:
        assert root in mounts, f"checkpoint root {root} is not mounted"
        if root not in save_roots:
            assert mounts[root].get("read_only") is True, f"{root} must be mounted read-only"
    for root in save_roots:
        assert mounts[root].get("read_only", False) is False, f"save root {root} must be writable"
    assert all(v["type"] == "bind" for v in mounts.values())
    assert SERVICE["read_only"] is True and any(t.startswith("/tmp:") for t in SERVICE["tmpfs"])


def test_token_comes_from_a_compose_secret_file():
    assert "MEGALOAD_TOKEN" not in ENV
    (secret,) = SERVICE["secrets"]
    assert ENV["MEGALOAD_TOKEN_FILE"] == f"/run/secrets/{secret}"
    source = (COMPOSE_FILE.parent / COMPOSE["secrets"][secret]["file"]).resolve()
    gitignore = source.parent / ".gitignore"
    assert gitignore.is_file() and "*" in gitignore.read_text().splitlines(), "the token directory must be ignored"


def test_stop_waits_for_a_save_to_finish():
    grace = float(ENV["MEGALOAD_SHUTDOWN_GRACE_SECONDS"])
    assert SERVICE["stop_signal"] == "SIGTERM"
    # uvicorn's connection drain and the save drain can each take the whole grace.
    assert _seconds(SERVICE["stop_grace_period"]) >= 2 * grace + 30
    assert SERVICE["init"] is True  # a tiny init forwards the signal and reaps children


def test_gpu_reservation_matches_the_process_count_and_the_user_is_the_images():
    (device,) = SERVICE["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert str(device["count"]) == ENV["MEGALOAD_NPROC_PER_NODE"]
    assert SERVICE["user"] == DOCKERFILE.stage("gpu").last("USER").args
    assert SERVICE["cap_drop"] == ["ALL"] and "no-new-privileges:true" in SERVICE["security_opt"]
    assert re.fullmatch(r"\d+gb", SERVICE["shm_size"])
