"""deploy/: every Kubernetes manifest validates against the Kubernetes schemas (kubernetes-validate,
offline, strict: unknown fields are errors) for a pinned version; the API server's Deployment can
roll without dropping requests; the Secrets are templates; the gpu work pool's base job template is
what Prefect's Kubernetes worker reads, and the Job it renders validates too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes these manifests target (preStop `sleep` needs >= 1.30)
JOB_TEMPLATE = DEPLOY / "prefect" / "gpu-pool-base-job-template.json"


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(DEPLOY)}#{i}", doc))
    return docs


DOCS = _documents()


def _find(kind: str, name: str) -> dict:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_there_are_manifests_for_every_part():
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    for wanted in [("Deployment", "onramp-api"), ("Service", "onramp-api"), ("Deployment", "prefect-server"),
                   ("Service", "prefect-server"), ("Deployment", "mlflow"), ("Service", "mlflow"),
                   ("StatefulSet", "postgres"), ("Deployment", "prefect-worker-gpu"),
                   ("Deployment", "prefect-worker-cpu"), ("Secret", "onramp-api-keys"), ("Secret", "onramp-s3"),
                   ("Secret", "onramp-postgres"), ("Secret", "prefect-auth")]:
        assert wanted in kinds, wanted


@pytest.mark.parametrize("where,doc", DOCS, ids=[w for w, _ in DOCS])
def test_manifest_validates_against_the_kubernetes_schema(where, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_does_catch_mistakes():
    api = json.loads(json.dumps(_find("Deployment", "onramp-api")))
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)
    api = json.loads(json.dumps(_find("Deployment", "onramp-api")))
    api["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStopp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)


def test_the_api_server_rolls_without_dropping_requests():
    api = _find("Deployment", "onramp-api")
    spec = api["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate" and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["onramp", "serve", "--registry"]
    drain = int(command[command.index("--drain-timeout") + 1])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]
    pause = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
    assert pause >= 3
    assert pod["terminationGracePeriodSeconds"] > pause + drain  # the kubelet never SIGKILLs a drain
    env = {e["name"]: e for e in container["env"]}
    keys_mount = next(m for m in container["volumeMounts"] if m["name"] == "keys")
    assert env["ONRAMP_KEYS_FILE"]["value"] == f"{keys_mount['mountPath']}/keys.json"
    keys_volume = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert keys_volume["secret"]["secretName"] == "onramp-api-keys"
    assert "keys.json" in _find("Secret", "onramp-api-keys")["stringData"]
    service = _find("Service", "onramp-api")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


def test_mlflow_uses_postgres_and_s3_from_secrets():
    (c,) = _find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = " ".join(c["command"] + c["args"])
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args and "--no-serve-artifacts" in args
    assert re.search(r"--default-artifact-root=s3://\S+", args)
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "onramp-postgres",
                                                                            "key": "mlflow-database-url"}
    assert {"secretRef": {"name": "onramp-s3"}} in c["envFrom"]
    s3 = _find("Secret", "onramp-s3")["stringData"]
    assert {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(s3)
    assert _find("Secret", "onramp-postgres")["stringData"]["mlflow-database-url"].startswith("postgresql://")


def test_prefect_server_and_workers_share_the_auth_string():
    (server,) = _find("Deployment", "prefect-server")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in server["env"]}
    ref = {"name": "prefect-auth", "key": "auth-string"}
    assert env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == ref
    for worker in ("prefect-worker-gpu", "prefect-worker-cpu"):
        (c,) = _find("Deployment", worker)["spec"]["template"]["spec"]["containers"]
        wenv = {e["name"]: e for e in c["env"]}
        assert wenv["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == ref
        assert wenv["PREFECT_API_URL"]["value"].endswith(":4200/api")
    (gpu,) = _find("Deployment", "prefect-worker-gpu")["spec"]["template"]["spec"]["containers"]
    assert gpu["command"][:5] == ["prefect", "worker", "start", "--pool", "gpu"] and "kubernetes" in gpu["command"]


REAL_LOOKING = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"\b[0-9a-f]{64}\b"),  # a sha256 (an API key's hash)
    re.compile(r"\b[A-Za-z0-9/+]{40}\b"),  # an AWS secret access key
    re.compile(r"-----BEGIN"),
]


def test_secrets_are_templates_with_placeholders_only():
    secrets = [(w, d) for w, d in DOCS if d["kind"] == "Secret"]
    assert secrets
    for where, secret in secrets:
        assert "data" not in secret, f"{where}: use stringData placeholders, not base64 data"
        for key, value in secret["stringData"].items():
            for pattern in REAL_LOOKING:
                assert not pattern.search(value), f"{where} {key} looks like a real secret"
        sensitive = {k: v for k, v in secret["stringData"].items() if re.search(r"KEY|PASSWORD|auth|url|keys", k, re.I)}
        for key, value in sensitive.items():
            if key in ("MLFLOW_S3_ENDPOINT_URL",) or "REPLACE_ME" in value:
                continue
            pytest.fail(f"{where} {key} holds no REPLACE_ME placeholder")
    assert "TEMPLATE" in (DEPLOY / "kubernetes" / "01-secrets.yaml").read_text().splitlines()[0]


# ------------------------------------------------------------------------------ the gpu work pool


def _job_manifest(values: dict) -> dict:
    """The Job Prefect's Kubernetes worker would create for a flow run: the template filled with
    ``values`` (prefect's templating), checked by the worker's own job configuration model, then
    prepared for a flow run as the worker does."""
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(JOB_TEMPLATE.read_text())
    config = KubernetesWorkerJobConfiguration(**apply_values(template["job_configuration"], values))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="build-smollm2-a100"))
    return config.job_manifest


def test_gpu_pool_template_has_prefects_shape_and_the_variables_onramp_sets():
    from prefect_kubernetes.worker import KubernetesWorker

    template = json.loads(JOB_TEMPLATE.read_text())
    default = KubernetesWorker.get_default_base_job_template()
    assert set(template) == {"job_configuration", "variables"}
    # every variable Prefect's worker defines is still there (the worker fills them in)
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    props = template["variables"]["properties"]
    assert props["image"]["default"] and "TensorRT-LLM" in props["image"]["description"]
    assert props["gpu_count"]["type"] == "integer" and props["gpu_count"]["default"] >= 1
    assert props["tolerations"]["default"] and props["node_selector"]["default"]
    import jsonschema

    jsonschema.Draft7Validator.check_schema(template["variables"])


def test_gpu_pool_job_renders_and_validates():
    template = json.loads(JOB_TEMPLATE.read_text())
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values = {**defaults, "name": "build-smollm2-a100", "gpu_count": 4,
              "image": "registry.example.com/onramp-trtllm:0.1.0", "labels": {"app": "onramp-build"},
              "annotations": {}, "command": "python -m prefect.engine"}
    job = _job_manifest(values)
    pod = job["spec"]["template"]["spec"]
    # Prefect's worker insists on completions/parallelism in the pod spec (its own default template
    # puts them there; the API server drops unknown fields): everything else must validate strictly
    assert (pod.pop("completions"), pod.pop("parallelism")) == (1, 1)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/onramp-trtllm:0.1.0"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 4 == resources["requests"]["nvidia.com/gpu"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]
    assert pod["restartPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ONRAMP_MLFLOW_TRACKING_URI"].startswith("http://mlflow.") and "PREFECT__FLOW_RUN_ID" in env
    assert {"secretRef": {"name": "onramp-s3"}} in container["envFrom"]  # the build job publishes to S3
