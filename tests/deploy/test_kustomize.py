"""deploy/kustomize: the base and the cpu and gpu overlays, rendered (tests/deploy/_kustomize.py),
validated against the Kubernetes JSON schemas (kubernetes-validate) and checked against the
service's settings, routes and the Dockerfile. No cluster runs here."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from _dockerfile import parse
from _kustomize import PatchError, apply_json6902, render

from megaload.app import create_app
from megaload.settings import Settings, parse_memory_budget

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kustomize"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")  # oldest and newest we check against
CONTAINER_ONLY_VARS = {"MEGALOAD_NPROC_PER_NODE"}
DOCKERFILE = parse(REPO / "Dockerfile")


def rendered(overlay: str) -> list[dict]:
    return render(KUSTOMIZE / "overlays" / overlay)


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[dict]) -> dict:
    (c,) = pod_spec(docs)["containers"]
    return c


def env_of(docs: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


def quantity_bytes(value: str | int) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(value))
    units = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return int(m.group(1)) * units[m.group(2)]


@pytest.fixture(scope="module")
def openapi_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


# ------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("target", ["base", "overlays/cpu", "overlays/gpu", "overlays/multi-gpu"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_resource_is_valid_kubernetes(target, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = render(KUSTOMIZE / target)
    assert sorted(d["kind"] for d in docs) == [
        "Deployment", "PersistentVolumeClaim", "PersistentVolumeClaim", "Service", "ServiceAccount",
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_catches_a_misspelt_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = copy.deepcopy(one(rendered("gpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_renderer_applies_json6902_as_specified():
    doc = {"a": {"list": [1, 2], "x": "old"}}
    out = apply_json6902(doc, [
        {"op": "add", "path": "/a/list/-", "value": 3},
        {"op": "add", "path": "/a/list/0", "value": 0},
        {"op": "replace", "path": "/a/x", "value": "new"},
        {"op": "remove", "path": "/a/list/1"},
        {"op": "add", "path": "/a/b~1c", "value": True},
        {"op": "test", "path": "/a/x", "value": "new"},
    ])
    assert out == {"a": {"list": [0, 2, 3], "x": "new", "b/c": True}} and doc == {"a": {"list": [1, 2], "x": "old"}}
    for bad in ({"op": "test", "path": "/a/x", "value": "other"}, {"op": "replace", "path": "/a/nope", "value": 1},
                {"op": "remove", "path": "/a/list/5"}):
        with pytest.raises(PatchError):
            apply_json6902(doc, [bad])


def test_overlays_only_add_to_the_base():
    base = render(KUSTOMIZE / "base")
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        assert [d["kind"] for d in docs] == [d["kind"] for d in base]
        base_env = env_of(base)
        assert {k: v for k, v in env_of(docs).items() if k in base_env} == base_env


# ------------------------------------------------------------------------------ the service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_agree_with_settings_service_and_scrape_annotations(overlay, openapi_paths):
    docs = rendered(overlay)
    port = Settings.model_fields["port"].default
    (container_port,) = container(docs)["ports"]
    assert container_port["containerPort"] == port and int(env_of(docs)["MEGALOAD_PORT"]) == port
    (service_port,) = one(docs, "Service")["spec"]["ports"]
    assert service_port["targetPort"] == container_port["name"] and service_port["port"] == port
    deployment = one(docs, "Deployment")
    assert one(docs, "Service")["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] in openapi_paths


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_services_health_routes(overlay, openapi_paths):
    c = container(rendered(overlay))
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] in ("/readyz", "/healthz")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] in openapi_paths
        assert c[probe]["httpGet"]["port"] == c["ports"][0]["name"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "start-up must allow minutes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_names_are_settings_and_validate(overlay, tmp_path):
    env = env_of(rendered(overlay))
    prefix = Settings.model_config["env_prefix"]
    known = {prefix + name.upper() for name in Settings.model_fields} | CONTAINER_ONLY_VARS
    assert set(env) <= known, set(env) - known
    values = {}
    for key, value in env.items():
        if key in CONTAINER_ONLY_VARS:
            assert key in (REPO / "deploy" / "docker" / "entrypoint.sh").read_text()
            continue
        if key in ("MEGALOAD_CHECKPOINT_ROOTS", "MEGALOAD_SAVE_ROOTS"):
            local = []
            for root in value.split(":"):
                (tmp_path / root.strip("/")).mkdir(exist_ok=True)
                local.append(str(tmp_path / root.strip("/")))
            value = ":".join(local)
        if key == "MEGALOAD_TOKEN_FILE":
            (tmp_path / "token").write_text("a-token-of-sufficient-length-0123")
            value = str(tmp_path / "token")
        values[key[len(prefix):].lower()] = value
    settings = Settings(**values)
    assert settings.device == {"cpu": "cpu", "gpu": "cuda"}[overlay]
    assert settings.backend == {"cpu": "gloo", "gpu": "nccl"}[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_token_is_a_mounted_secret_never_a_literal(overlay):
    docs = rendered(overlay)
    c = container(docs)
    assert "MEGALOAD_TOKEN" not in {e["name"] for e in c["env"]}
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret with data is committed"
    token_file = Path(env_of(docs)["MEGALOAD_TOKEN_FILE"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(token_file.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "megaload-token"
    assert [i["path"] for i in volume["secret"]["items"]] == [token_file.name]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the token is not world-readable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkpoints_read_only_saves_writable_tmp_and_shm_in_memory(overlay):
    docs = rendered(overlay)
    env = env_of(docs)
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    save_roots = env["MEGALOAD_SAVE_ROOTS"].split(":")
    for root in env["MEGALOAD_CHECKPOINT_ROOTS"].split(":"):
        assert root in mounts
        if root not in save_roots:
            assert mounts[root]["readOnly"] is True
            claim = volumes[mounts[root]["name"]]["persistentVolumeClaim"]
            assert claim["readOnly"] is True
            pvc = one(docs, "PersistentVolumeClaim", claim["claimName"])
            assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    for root in save_roots:
        assert not mounts[root].get("readOnly", False)
        claim = volumes[mounts[root]["name"]]["persistentVolumeClaim"]
        assert "ReadWriteOnce" in one(docs, "PersistentVolumeClaim", claim["claimName"])["spec"]["accessModes"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory" and quantity_bytes(shm["sizeLimit"]) >= 2**30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context_is_restrictive_and_matches_the_images_user(overlay):
    docs = rendered(overlay)
    spec = pod_spec(docs)
    uid, gid = (int(x) for x in DOCKERFILE.stage(overlay).last("USER").args.split(":"))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container(docs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc.get("privileged", False) is False
    assert spec["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_save_drain(overlay):
    docs = rendered(overlay)
    grace = float(env_of(docs)["MEGALOAD_SHUTDOWN_GRACE_SECONDS"])
    # uvicorn's connection drain and the save drain can each take the whole grace.
    assert pod_spec(docs)["terminationGracePeriodSeconds"] >= 2 * grace + 30
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "Recreate"


def test_gpu_overlay_requests_gpus_for_every_process():
    docs = rendered("gpu")
    resources = container(docs)["resources"]
    gpus = int(resources["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and int(resources["requests"]["nvidia.com/gpu"]) == gpus
    assert int(env_of(docs)["MEGALOAD_NPROC_PER_NODE"]) == gpus
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(docs)["tolerations"]
    assert container(docs)["image"].endswith(":gpu") and DOCKERFILE.stage("gpu")


def test_cpu_overlay_has_no_gpu_and_a_budget_below_its_memory_limit():
    docs = rendered("cpu")
    resources = container(docs)["resources"]
    assert not any("nvidia.com" in k for part in resources.values() for k in part)
    budget = parse_memory_budget(env_of(docs)["MEGALOAD_MEMORY_BUDGET"])
    limit = quantity_bytes(resources["limits"]["memory"])
    assert budget.bytes is not None and budget.bytes <= 0.8 * limit
    assert container(docs)["image"].endswith(":cpu") and DOCKERFILE.stage("cpu")


# ------------------------------------------------------------------------------ model parallel


def test_multi_gpu_overlay_runs_one_rank_per_gpu_at_a_layout_settings_accept():
    docs = rendered("multi-gpu")
    env = env_of(docs)
    gpus = int(container(docs)["resources"]["limits"]["nvidia.com/gpu"])
    assert int(env["MEGALOAD_NPROC_PER_NODE"]) == gpus > 1
    tp, pp = int(env["MEGALOAD_TENSOR_PARALLEL"]), int(env["MEGALOAD_PIPELINE_PARALLEL"])
    assert tp * pp == gpus
    settings = Settings(world_size=gpus, tensor_parallel=tp, pipeline_parallel=pp, backend="nccl",
                        collective_timeout_seconds=env["MEGALOAD_COLLECTIVE_TIMEOUT_SECONDS"])
    assert settings.tensor_parallel == tp


LWS = KUSTOMIZE / "examples" / "multi-node-lws"


def lws_pods() -> dict[str, dict]:
    (lws,) = [d for d in render(LWS) if d["kind"] == "LeaderWorkerSet"]
    spec = lws["spec"]["leaderWorkerTemplate"]
    return {"leader": spec["leaderTemplate"], "worker": spec["workerTemplate"], "size": spec["size"]}


@pytest.mark.parametrize("role", ["leader", "worker"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_lws_pod_templates_are_valid_pods(role, version):
    """The LeaderWorkerSet is a custom resource: its pod templates are checked as Pods."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    template = lws_pods()[role]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "megaload", **template["metadata"]},
           "spec": template["spec"]}
    kubernetes_validate.validate(pod, version, strict=True)
    (service,) = [d for d in render(LWS) if d["kind"] == "Service"]
    kubernetes_validate.validate(service, version, strict=True)


def test_lws_ranks_match_the_layout_and_rank_0_is_the_leader():
    pods = lws_pods()
    for role in ("leader", "worker"):
        (c,) = pods[role]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        command = " ".join(c["command"] + c["args"])
        nproc = int(re.search(r"--nproc-per-node=(\d+)", command).group(1))
        assert '--node-rank="$LWS_WORKER_INDEX"' in command and '--master-addr="$LWS_LEADER_ADDRESS"' in command
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == nproc
        world = nproc * pods["size"]
        Settings(world_size=world, tensor_parallel=int(env["MEGALOAD_TENSOR_PARALLEL"]),
                 pipeline_parallel=int(env["MEGALOAD_PIPELINE_PARALLEL"]), backend="nccl", host="127.0.0.1")
        for name in env:
            if name.startswith("MEGALOAD_"):
                assert name.removeprefix("MEGALOAD_").lower() in Settings.model_fields, name
    assert "readinessProbe" in pods["leader"]["spec"]["containers"][0]
    (service,) = [d for d in render(LWS) if d["kind"] == "Service"]
    assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
