"""The Kubernetes manifests (k8s/) are valid and consistent.

Each kustomization (the base and the dev and prod overlays) is rendered with
`kubectl kustomize` and every object is checked:

- core kinds against the Kubernetes 1.30 OpenAPI schemas of `kubernetes-validate`
  (strict: unknown fields are errors);
- KEDA's ScaledObject and TriggerAuthentication against the openAPIV3Schema of
  KEDA's own CRDs (tests/fixtures/keda/, copied from kedacore/keda v2.20), with
  unknown fields refused as the API server's strict field validation would;
- ServiceMonitor (no schema here: the Prometheus operator's CRD is not vendored)
  by hand: apiVersion, kind, selector and an endpoint scraping /metrics on the
  Service's port.

Then what a schema cannot see: probes, security context, the shutdown
arithmetic against the config in the ConfigMap, the configs themselves (as
`sluicegate config check` runs them), KEDA targets and triggers, the metrics the
queries name, and the overlays' differences. The Dockerfiles are checked in
tests/unit/test_dockerfiles.py.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KEDA_CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "keda"
KUBERNETES_VERSION = "1.30.0"
TARGETS = ("base", "overlays/dev", "overlays/prod")
CONTAINER_PORT = 8300

Obj = dict[str, Any]


@functools.cache
def _render(target: str) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(target: str) -> list[Obj]:
    return copy.deepcopy(list(_render(target)))


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = find(objs, kind, name)
    return obj


def containers(deployment: Obj) -> list[Obj]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def mounted_config(objs: list[Obj], deployment: Obj) -> tuple[dict[str, Any], str]:
    """The sluicegate config the Deployment reads: (parsed, its text) from the ConfigMap behind --config."""
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert mount.get("readOnly") is True, "the config is mounted read-only"
    cm = one(objs, "ConfigMap", volume["configMap"]["name"])
    text = cm["data"][path[len(mount["mountPath"].rstrip("/")) + 1:]]
    return yaml.safe_load(text), text


# --------------------------------------------------------------------- schemas


def test_kustomizations_render() -> None:
    for target in TARGETS:
        kinds = {o["kind"] for o in render(target)}
        assert {
            "Deployment", "Service", "ConfigMap", "ScaledObject", "TriggerAuthentication", "ServiceMonitor", "NetworkPolicy"
        } <= kinds, target


@pytest.mark.parametrize("target", TARGETS)
def test_core_objects_match_the_kubernetes_schema(target: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for obj in render(target):
        if obj["apiVersion"].split("/")[0] in ("keda.sh", "monitoring.coreos.com"):
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 4


def test_the_kubernetes_schema_refuses_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = one(render("base"), "Deployment", "sluicegate")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """An openAPIV3Schema that refuses unknown fields, as strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _keda_schemas() -> dict[tuple[str, str], Any]:
    schemas = {}
    for path in KEDA_CRDS.glob("keda.sh_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def test_keda_fixtures_keep_their_licence_note() -> None:
    assert "Apache License 2.0" in (KEDA_CRDS / "README.md").read_text()
    assert {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")} <= set(_keda_schemas())


@pytest.mark.parametrize("target", TARGETS)
def test_keda_objects_match_the_crd_schemas(target: str) -> None:
    import jsonschema

    objs = [o for o in render(target) if o["apiVersion"].startswith("keda.sh/")]
    assert objs
    for obj in objs:
        schema = _keda_schemas()[(obj["apiVersion"], obj["kind"])]
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_the_strict_keda_schema_refuses_a_misspelt_field() -> None:
    import jsonschema

    schema = _keda_schemas()[("keda.sh/v1alpha1", "ScaledObject")]
    obj = one(render("base"), "ScaledObject", "sluicegate")
    obj["spec"]["minReplicas"] = 1
    assert not jsonschema.Draft7Validator(schema).is_valid(obj)


@pytest.mark.parametrize("target", TARGETS)
def test_service_monitor_scrapes_metrics(target: str) -> None:
    # Checked by hand: the Prometheus operator's CRD is not vendored here.
    objs = render(target)
    (sm,) = find(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = sm["spec"]["selector"]["matchLabels"]
    endpoints = sm["spec"]["endpoints"]
    assert endpoints and all(e["path"] == "/metrics" for e in endpoints)
    selected = [s for s in find(objs, "Service") if selector.items() <= s["metadata"].get("labels", {}).items()]
    assert one(objs, "Service", "sluicegate") in selected
    for service in selected:
        ports = {p.get("name") for p in service["spec"]["ports"]}
        assert all(e["port"] in ports for e in endpoints), service["metadata"]["name"]


# -------------------------------------------------------------------- semantics


def _check_probes_and_security(deployment: Obj) -> None:
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == CONTAINER_PORT
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", CONTAINER_PORT), probe
    pod_sc, sc = spec["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # Read-only root: writable paths are emptyDirs, the working directory among them.
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty]
    assert "/tmp" in writable and container["workingDir"] in writable
    assert container["resources"]["requests"] and container["resources"]["limits"]


def _prestop_seconds(container: Obj) -> float:
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


@pytest.mark.parametrize("target", TARGETS)
def test_deployments_probe_secure_and_drain(target: str) -> None:
    objs = render(target)
    deployments = find(objs, "Deployment")
    assert one(objs, "Deployment", "sluicegate") in deployments
    for deployment in deployments:
        _check_probes_and_security(deployment)
        (container,) = containers(deployment)
        assert container["args"][0] == "serve"
        config, _ = mounted_config(objs, deployment)
        grace = config.get("server", {}).get("grace_period_s", 30.0)
        needed = math.ceil(grace + _prestop_seconds(container))
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed, deployment["metadata"]["name"]
        assert config["server"]["port"] == CONTAINER_PORT and config["server"]["host"] == "0.0.0.0"


def test_router_shape() -> None:
    objs = render("base")
    router = one(objs, "Deployment", "sluicegate")
    (container,) = containers(router)
    assert container["image"] == "sluicegate"
    assert container["args"] == ["serve", "--config", "/etc/sluicegate/sluicegate.yaml"]
    assert router["spec"]["template"]["spec"]["topologySpreadConstraints"]
    service = one(objs, "Service", "sluicegate")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8300, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= router["spec"]["template"]["metadata"]["labels"].items()
    assert find(objs, "PodDisruptionBudget", "sluicegate")


def test_engine_pool_runs_on_gpu_nodes() -> None:
    objs = render("base")
    engine = one(objs, "Deployment", "sluicegate-engine")
    spec = engine["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "sluicegate-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec.get("nodeSelector") or spec.get("affinity")
    service = one(objs, "Service", "sluicegate-engine")
    assert service["spec"]["selector"].items() <= engine["spec"]["template"]["metadata"]["labels"].items()
    # The router's Service must not select the engine pods (nor the other way round).
    router_selector = one(objs, "Service", "sluicegate")["spec"]["selector"]
    assert not router_selector.items() <= engine["spec"]["template"]["metadata"]["labels"].items()
    # The router reaches the pool through that Service.
    router_config, _ = mounted_config(objs, one(objs, "Deployment", "sluicegate"))
    urls = [d.get("base_url", "") for d in router_config["deployments"]]
    assert "http://sluicegate-engine:8300/v1" in urls


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_come_from_a_secret_and_cover_the_config(target: str) -> None:
    objs = render(target)
    assert not find(objs, "Secret"), "secret values never live in the manifests"
    for deployment in find(objs, "Deployment"):
        (container,) = containers(deployment)
        env = {e["name"]: e for e in container.get("env", [])}
        for e in env.values():
            if re.search(r"KEY|TOKEN|DSN|PASSWORD|SECRET|PEPPER", e["name"]):
                assert "secretKeyRef" in e.get("valueFrom", {}), e["name"]
        _, text = mounted_config(objs, deployment)
        for name in re.findall(r"\{env: *([A-Z0-9_]+)\}", text):
            assert name in env, f"{deployment['metadata']['name']}: {name} is referenced by the config but not set"


@pytest.mark.parametrize("target", TARGETS)
def test_configs_pass_config_check(target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config_check import load_config
    from router.config_resolve import resolve

    objs = render(target)
    for deployment in find(objs, "Deployment"):
        _, text = mounted_config(objs, deployment)
        for name in re.findall(r"\{env: *([A-Z0-9_]+)\}", text):
            monkeypatch.setenv(name, "placeholder-for-the-test")
        path = tmp_path / f"{deployment['metadata']['name']}.yaml"
        path.write_text(text)
        resolve(load_config(path))


@pytest.mark.parametrize("target", TARGETS)
def test_scaled_objects_target_deployments_in_the_render(target: str) -> None:
    objs = render(target)
    deployments = {d["metadata"]["name"] for d in find(objs, "Deployment")}
    auths = {a["metadata"]["name"] for a in find(objs, "TriggerAuthentication")}
    scaled = find(objs, "ScaledObject")
    assert scaled
    for so in scaled:
        ref = so["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment" and ref["name"] in deployments, so["metadata"]["name"]
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "prometheus"
            assert trigger["authenticationRef"]["name"] in auths
            assert trigger["metadata"]["authModes"] == "bearer"
            float(trigger["metadata"]["threshold"])
    for auth in find(objs, "TriggerAuthentication"):
        refs = auth["spec"]["secretTargetRef"]
        assert any(r["parameter"] == "bearerToken" for r in refs)
    router_so = next(so for so in scaled if so["spec"]["scaleTargetRef"]["name"] == "sluicegate")
    assert any("sluicegate_in_flight_requests" in t["metadata"]["query"] for t in router_so["spec"]["triggers"])


def test_engine_pool_scales_to_zero() -> None:
    for target in ("base", "overlays/prod"):
        so = one(render(target), "ScaledObject", "sluicegate-engine")
        assert so["spec"]["minReplicaCount"] == 0
        triggers = so["spec"]["triggers"]
        assert any("sluicegate_engine_waiting_requests" in t["metadata"]["query"] for t in triggers)
        for trigger in triggers:
            assert float(trigger["metadata"]["activationThreshold"]) >= 0, trigger["name"]


def _exported_metric_names() -> set[str]:
    from router.metrics import Metrics

    metrics = Metrics()
    metrics.track_engine_load(lambda: {"d": (1, 2)})
    text = metrics.render().decode()
    return (
        {m.group(1) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)}
        | set(re.findall(r"^([a-z_:]+)[{ ]", text, re.MULTILINE))
    )


def test_keda_queries_name_exported_metrics() -> None:
    exported = _exported_metric_names()
    queries = [t["metadata"]["query"] for so in find(render("base"), "ScaledObject") for t in so["spec"]["triggers"]]
    assert queries
    for query in queries:
        names = re.findall(r"\bsluicegate_[a-z_]+", query)
        assert names, query
        for name in names:
            assert name in exported, name


def test_network_policy_allows_what_the_router_needs() -> None:
    objs = render("base")
    router_labels = one(objs, "Deployment", "sluicegate")["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in find(objs, "NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"].items() <= router_labels.items()]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {CONTAINER_PORT}
    assert any(peer == {"podSelector": {}} for rule in policy["spec"]["ingress"] for peer in rule["from"])
    egress = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 5432), ("TCP", 443), ("TCP", CONTAINER_PORT)} <= egress


def test_dev_is_one_small_replica_without_gpus_or_pdb() -> None:
    objs = render("overlays/dev")
    router = one(objs, "Deployment", "sluicegate")
    assert router["spec"]["replicas"] == 1
    assert one(objs, "ScaledObject", "sluicegate")["spec"]["minReplicaCount"] == 1
    assert not find(objs, "PodDisruptionBudget")
    assert [d["metadata"]["name"] for d in find(objs, "Deployment")] == ["sluicegate"]
    for obj in objs:
        assert "nvidia.com/gpu" not in yaml.safe_dump(obj) or obj["kind"] == "ConfigMap"
    assert containers(router)[0]["resources"]["requests"]["memory"] == "256Mi"


def test_prod_has_three_replicas_a_pdb_and_pinned_images() -> None:
    objs = render("overlays/prod")
    router = one(objs, "Deployment", "sluicegate")
    assert router["spec"]["replicas"] >= 3
    assert one(objs, "ScaledObject", "sluicegate")["spec"]["minReplicaCount"] >= 3
    pdb = one(objs, "PodDisruptionBudget", "sluicegate")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= router["spec"]["template"]["metadata"]["labels"].items()
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < router["spec"]["replicas"]
    for deployment in find(objs, "Deployment"):
        image = containers(deployment)[0]["image"]
        assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", image.rsplit("/", 1)[-1]), image
        assert not image.endswith(":latest"), image
    base = one(render("base"), "Deployment", "sluicegate")
    prod_cpu = containers(router)[0]["resources"]["limits"]["cpu"]
    assert float(prod_cpu) > float(containers(base)[0]["resources"]["limits"]["cpu"])


def test_old_keda_directory_is_gone() -> None:
    assert not (K8S / "keda").exists(), "k8s/keda was replaced by k8s/base and k8s/overlays"
