"""The Helm chart, linted and rendered by Helm itself (Helm v4's Go SDK through PyPI
``helm-python-sdk``: no helm binary, no cluster, no network), and its objects checked against
what the code reads: the env names are exactly shared/settings.py's, KEDA scales on the queues
the workers consume, alerts and the dashboard use only metrics workers/metrics.py exports.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from producer.cli import app as cli_app
from shared.deid.pseudonyms import KEY_NAME, MIN_KEY_CHARS
from shared.options import ENV_PREFIX
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "dicomfleet"
DEFAULT = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
EVALUATION = {"redis": {"enabled": True}, "minio": {"enabled": True}, "networkPolicy": {"enabled": True},
              "deid": {"key": "evaluation-key-0123456789abcdefghijklmnop"}, "autoscaling": {"engine": "keda"},
              "producer": {"source": "s3://in/batch", "out": "s3://out/batch", "job": {"enabled": True}}}
DEID_KEY = ENV_PREFIX + KEY_NAME  # shared.deid reads it: the one fleet secret outside Settings
RELEASE, NAMESPACE = "fleet", "imaging"
FULLNAME = f"{RELEASE}-dicomfleet"


def merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render_raw(values: dict | None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


class Rendered:
    """Rendered objects by (kind, name), and the raw text per template."""

    def __init__(self, values: dict | None) -> None:
        self.raw = render_raw(values)
        self.objects: dict[tuple[str, str], dict] = {}
        for path, text in self.raw.items():
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    key = (doc["kind"], doc["metadata"]["name"])
                    assert key not in self.objects, key
                    self.objects[key] = doc

    def get(self, kind: str, name: str) -> dict:
        return self.objects[(kind, name)]

    def kinds(self, kind: str) -> list[dict]:
        return [o for (k, _), o in self.objects.items() if k == kind]

    def pod_specs(self) -> dict[str, dict]:
        """Every pod template, by owner name."""
        pods = {}
        for (kind, name), obj in self.objects.items():
            if kind in ("Deployment", "StatefulSet", "Job"):
                pods[name] = obj["spec"]["template"]
            elif kind == "CronJob":
                pods[name] = obj["spec"]["jobTemplate"]["spec"]["template"]
        return pods

    def fleet_containers(self) -> dict[str, dict]:
        """The dicomfleet containers (worker, producer) by owner name."""
        return {name: c for name, pod in self.pod_specs().items() for c in pod["spec"]["containers"]
                if c["name"] in ("worker", "producer")}

    def environment(self, container: dict, files: dict[str, str] | None = None) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env with
        $(VAR) expanded; ``files`` maps mounted secret paths to their contents for *_FILE checks."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
            else:
                env[item["name"]] = f"<from {item['valueFrom']['secretKeyRef']['name']}>"
        return env


@pytest.fixture(scope="module")
def default() -> Rendered:
    return Rendered(DEFAULT)


@pytest.fixture(scope="module")
def production() -> Rendered:
    return Rendered(PRODUCTION)


@pytest.fixture(scope="module")
def evaluation() -> Rendered:
    return Rendered(EVALUATION)


# --- lint and render -------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, DEFAULT, PRODUCTION, EVALUATION], ids=["chart", "default", "production", "evaluation"])
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version="v1.29.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # no warnings either (icon: info)


def test_install_without_a_redis_host_fails_with_a_one_line_reason():
    with pytest.raises(helm.HelmError) as err:
        render_raw(None)
    assert "externalRedis.host is required" in str(err.value)


def test_what_each_values_file_renders(default, production, evaluation):
    assert {k for k, _ in default.objects} == {"ConfigMap", "Secret", "ServiceAccount", "Deployment", "Service",
                                               "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    # production takes every credential from existing Secrets: the chart makes none
    assert not production.kinds("Secret")
    assert {k for k, _ in production.objects} >= {"ScaledObject", "TriggerAuthentication", "CronJob", "ServiceMonitor",
                                                  "PrometheusRule", "NetworkPolicy"}
    assert not production.kinds("HorizontalPodAutoscaler")
    assert {n for k, n in evaluation.objects if k in ("StatefulSet", "Deployment")} == {
        f"{FULLNAME}-redis", f"{FULLNAME}-minio", f"{FULLNAME}-worker"}


# --- settings: env names and values ----------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "production", "evaluation"])
def test_env_names_are_exactly_the_settings_the_code_reads(name, request):
    rendered: Rendered = request.getfixturevalue(name)
    expected = set(Settings.env_names()) | {DEID_KEY}
    if name != "production":  # a Redis without a password: no password file
        expected.discard("DICOMFLEET_REDIS_PASSWORD")
    containers = rendered.fleet_containers()
    assert containers
    for owner, container in containers.items():
        names = {k.removesuffix("_FILE") for k in rendered.environment(container) if k.startswith("DICOMFLEET_")}
        assert names == expected, (owner, names ^ expected)


def secret_files(rendered: Rendered, pod: dict, values: dict) -> dict[str, str]:
    """Contents of the projected secret files, from the chart's own Secret (or a stand-in for existing ones)."""
    files = {}
    mounts = {m["name"]: m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
    for volume in pod["spec"]["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            secret = source["secret"]
            data = rendered.objects.get(("Secret", secret["name"]), {}).get("data")
            for item in secret["items"]:
                content = base64.b64decode(data[item["key"]]).decode() if data else f"{secret['name']}/{item['key']}"
                files[f"{mounts[volume['name']]}/{item['path']}"] = content
    return files


@pytest.mark.parametrize("name,values", [("production", PRODUCTION), ("evaluation", EVALUATION)])
def test_settings_read_back_from_the_rendered_environment(name, values, request, monkeypatch, tmp_path):
    """Settings.from_env() over the pod's environment (secret files mounted) gives the chart's values."""
    rendered: Rendered = request.getfixturevalue(name)
    pod = rendered.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    files = secret_files(rendered, pod, values)
    env = rendered.environment(container)
    for key in list(env):
        if key.endswith("_FILE"):
            local = tmp_path / Path(env[key]).name
            local.write_text(files[env[key]])
            env[key] = str(local)
    for key in [k for k in __import__("os").environ if k.startswith("DICOMFLEET_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings.from_env()
    v = merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    assert (s.queue, s.queue_high, s.key_prefix) == (v["config"]["queue"], v["config"]["queueHigh"], v["config"]["keyPrefix"])
    assert (s.visibility_timeout, s.max_redeliveries, s.max_retries) == (
        v["config"]["visibilityTimeout"], v["config"]["maxRedeliveries"], v["config"]["maxRetries"])
    assert s.retry_backoff_max == v["config"]["retryBackoffMax"]
    assert (s.worker_concurrency, s.soft_shutdown_timeout) == (v["worker"]["concurrency"], v["worker"]["softShutdownTimeout"])
    assert s.metrics_port == v["metrics"]["port"]
    assert s.broker_url == s.result_backend and s.broker == s.backend
    if name == "production":  # the password a file, put into the URL percent-encoded by the code
        assert s.broker_url == "rediss://redis.data.svc.cluster.local:6380/2"
        assert s.redis_password == f"dicomfleet-redis/{v['externalRedis']['existingSecretPasswordKey']}"
        assert s.broker == ("rediss://:dicomfleet-redis%2F" + v["externalRedis"]["existingSecretPasswordKey"]
                            + "@redis.data.svc.cluster.local:6380/2?ssl_cert_reqs=required")
        assert "REDIS_PASSWORD" not in env
        assert (s.s3_endpoint, s.s3_secure, s.s3_region) == ("minio.storage.svc.cluster.local:9443", True, "eu-west-1")
        assert (s.s3_access_key, s.s3_secret_key) == ("dicomfleet-s3/access-key", "dicomfleet-s3/secret-key")
        assert open(env[DEID_KEY + "_FILE"]).read() == "dicomfleet-deid/deid-key"
    else:
        assert s.broker_url == f"redis://{FULLNAME}-redis:6379/0"
        assert (s.s3_endpoint, s.s3_secure) == (f"{FULLNAME}-minio:9000", False)
        assert len(s.s3_access_key) == 20 and len(s.s3_secret_key) == 40  # generated, shared with MinIO
        assert open(env[DEID_KEY + "_FILE"]).read() == values["deid"]["key"]
        minio = rendered.get("Deployment", f"{FULLNAME}-minio")["spec"]["template"]["spec"]["containers"][0]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in minio["env"] if "valueFrom" in e}
        assert refs["MINIO_ROOT_USER"] == {"name": FULLNAME, "key": "s3-access-key"}


# --- workers: autoscaling, shutdown, probes --------------------------------------------------

def worker_queues(rendered: Rendered) -> list[str]:
    """The queues `dicomfleet worker` consumes, in order, under this pod's settings: the Celery
    app's own queue list (the worker is given no --queues, so it drains all of them)."""
    from workers.celery_app import celery_config

    container = rendered.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "worker" and "--queues" not in container["args"]
    env = rendered.environment(container)
    settings = Settings(queue=env["DICOMFLEET_QUEUE"], queue_high=env["DICOMFLEET_QUEUE_HIGH"])
    return [q.name for q in celery_config(settings)["task_queues"]]


def test_keda_scales_on_the_queues_the_workers_consume_high_priority_first(production):
    scaled = production.get("ScaledObject", f"{FULLNAME}-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == f"{FULLNAME}-worker"
    *triggers, held = spec["triggers"]
    assert [t["type"] for t in triggers] == ["redis", "redis"]
    assert [t["metadata"]["listName"] for t in triggers] == worker_queues(production) == ["dicomfleet.high", "dicomfleet"]
    high, batch = (t["metadata"] for t in triggers)
    # the jobs workers hold, one pod each: busy workers are never scaled away
    assert (held["name"], held["metadata"]["listName"], held["metadata"]["listLength"]) == (
        "in-flight", "dicomfleet:running", "1")  # Ledger.running_key under the default key prefix
    triggers.append(held)
    assert int(high["listLength"]) < int(batch["listLength"]) and high["activationListLength"] == "0"
    for t in triggers:
        assert t["metadata"]["address"] == "redis.data.svc.cluster.local:6380"
        assert (t["metadata"]["databaseIndex"], t["metadata"]["enableTLS"]) == ("2", "true")
        assert t["authenticationRef"]["name"] == f"{FULLNAME}-redis-auth"
    auth = production.get("TriggerAuthentication", f"{FULLNAME}-redis-auth")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "dicomfleet-redis", "key": "password"}]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 40)  # scaleToZero
    renamed = Rendered(merge(PRODUCTION, {"config": {"queue": "nightly", "queueHigh": "stat"},
                                          "autoscaling": {"scaleToZero": False, "minReplicas": 2}}))
    spec = renamed.get("ScaledObject", f"{FULLNAME}-worker")["spec"]
    assert [t["metadata"]["listName"] for t in spec["triggers"][:2]] == worker_queues(renamed) == ["stat", "nightly"]
    assert spec["minReplicaCount"] == 2
    assert "replicas" not in production.get("Deployment", f"{FULLNAME}-worker")["spec"]


def test_hpa_where_keda_is_absent_and_fixed_replicas_without_autoscaling(default):
    hpa = default.get("HorizontalPodAutoscaler", f"{FULLNAME}-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-worker"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)
    fixed = Rendered(merge(DEFAULT, {"autoscaling": {"engine": "none"}, "worker": {"replicaCount": 3}}))
    assert not fixed.kinds("HorizontalPodAutoscaler") and not fixed.kinds("ScaledObject")
    assert fixed.get("Deployment", f"{FULLNAME}-worker")["spec"]["replicas"] == 3
    # an HPA cannot scale to zero: the fallback keeps one worker
    zero = Rendered(merge(DEFAULT, {"autoscaling": {"engine": "hpa", "scaleToZero": True, "minReplicas": 0}}))
    assert zero.get("HorizontalPodAutoscaler", f"{FULLNAME}-worker")["spec"]["minReplicas"] == 1


@pytest.mark.parametrize("name", ["default", "production"])
def test_warm_shutdown_grace_outlasts_the_soft_shutdown_timeout(name, request):
    rendered: Rendered = request.getfixturevalue(name)
    pod = rendered.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]
    soft = float(rendered.environment(pod["spec"]["containers"][0])["DICOMFLEET_SOFT_SHUTDOWN_TIMEOUT"])
    assert pod["spec"]["terminationGracePeriodSeconds"] == soft + 30
    with pytest.raises(helm.HelmError, match="must exceed worker.softShutdownTimeout"):
        render_raw(merge(DEFAULT, {"worker": {"terminationGracePeriodSeconds": 60, "softShutdownTimeout": 60}}))


def test_worker_probes_hit_the_metrics_server_port(production):
    container = production.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]["containers"][0]
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == int(production.environment(container)["DICOMFLEET_METRICS_PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


# --- security, labels, checksums -------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "production", "evaluation"])
def test_every_pod_is_restricted_non_root_with_read_only_root_and_resources(name, request):
    rendered: Rendered = request.getfixturevalue(name)
    for owner, pod in rendered.pod_specs().items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["runAsUser"] > 0, owner
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        assert spec["automountServiceAccountToken"] is False, owner
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, owner
            assert sc["capabilities"]["drop"] == ["ALL"], owner
            assert c["resources"]["requests"] and c["resources"]["limits"], owner  # a ResourceQuota needs them
            if c["name"] in ("worker", "producer"):
                scratch = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
                assert "emptyDir" in volumes[scratch["name"]], owner
                env = rendered.environment(c)
                assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


@pytest.mark.parametrize("name", ["default", "production", "evaluation"])
def test_standard_labels_with_component(name, request):
    rendered: Rendered = request.getfixturevalue(name)
    for (kind, obj_name), obj in rendered.objects.items():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dicomfleet", (kind, obj_name)
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] and labels["helm.sh/chart"].startswith("dicomfleet-")
        assert labels["app.kubernetes.io/component"]
    components = {owner: pod["metadata"]["labels"]["app.kubernetes.io/component"]
                  for owner, pod in rendered.pod_specs().items()}
    for owner in rendered.fleet_containers():
        assert components[owner] == ("worker" if owner.endswith("-worker") else "producer")


def test_checksum_annotations_follow_the_config_and_secret(default):
    pod = default.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    config_text = default.raw["dicomfleet/templates/configmap.yaml"]
    assert notes["checksum/config"] == hashlib.sha256(config_text.encode()).hexdigest()
    pinned = merge(DEFAULT, {"deid": {"key": "k" * 40}})
    a = Rendered(pinned).get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["metadata"]["annotations"]
    b = Rendered(merge(pinned, {"config": {"maxRetries": 9}})).get(
        "Deployment", f"{FULLNAME}-worker")["spec"]["template"]["metadata"]["annotations"]
    c = Rendered(merge(pinned, {"deid": {"key": "j" * 40}})).get(
        "Deployment", f"{FULLNAME}-worker")["spec"]["template"]["metadata"]["annotations"]
    d = Rendered(merge(pinned, {"worker": {"replicaCount": 7}})).get(
        "Deployment", f"{FULLNAME}-worker")["spec"]["template"]["metadata"]["annotations"]
    assert b["checksum/config"] != a["checksum/config"] and b["checksum/secret"] == a["checksum/secret"]
    assert c["checksum/secret"] != a["checksum/secret"] and c["checksum/config"] == a["checksum/config"]
    assert d == a


def test_chart_secret_is_kept_and_existing_secrets_are_referenced(default, production):
    secret = default.get("Secret", FULLNAME)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(base64.b64decode(secret["data"]["deid-key"])) == 64  # generated once, then looked up
    # the chart refuses a key shared.deid would refuse at start-up
    Rendered(merge(DEFAULT, {"deid": {"key": "k" * MIN_KEY_CHARS}}))
    with pytest.raises(helm.HelmError, match=f"at least {MIN_KEY_CHARS} characters"):
        render_raw(merge(DEFAULT, {"deid": {"key": "k" * (MIN_KEY_CHARS - 1)}}))
    pod = production.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]
    sources = next(v for v in pod["volumes"] if v["name"] == "secrets")["projected"]["sources"]
    refs = {(s["secret"]["name"], i["key"], i["path"]) for s in sources for i in s["secret"]["items"]}
    assert refs == {("dicomfleet-s3", "access-key", "s3-access-key"), ("dicomfleet-s3", "secret-key", "s3-secret-key"),
                    ("dicomfleet-deid", "deid-key", "deid-key"), ("dicomfleet-redis", "password", "redis-password")}


# --- producer --------------------------------------------------------------------------------

def test_producer_cronjob_and_job_run_submit_with_options_the_cli_has(production, evaluation):
    submit = cli_app.commands["submit"]
    flags = {opt for p in submit.params for opt in p.opts}
    cron = production.get("CronJob", f"{FULLNAME}-producer")
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"], cron["spec"]["concurrencyPolicy"]) == (
        "30 1 * * *", "Europe/Berlin", "Forbid")
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["submit", "s3://pacs-export/nightly", "--out", "s3://dicom-derived/nightly"]
    job = evaluation.get("Job", f"{FULLNAME}-producer-1")  # one per release revision
    for argv in (args, job["spec"]["template"]["spec"]["containers"][0]["args"]):
        assert {a for a in argv if a.startswith("--")} <= flags
    # submit's verdicts (1, 3) end the Job at once; 2 (Redis or S3 not answering yet) is retried
    for spec in (cron["spec"]["jobTemplate"]["spec"], job["spec"]):
        [rule] = spec["podFailurePolicy"]["rules"]
        assert rule == {"action": "FailJob", "onExitCodes": {"containerName": "producer", "operator": "In",
                                                               "values": [1, 3]}}
    high = Rendered(merge(EVALUATION, {"producer": {"priority": "high"}}))
    hargs = high.get("Job", f"{FULLNAME}-producer-1")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert hargs[hargs.index("--priority") + 1] == "high"
    with pytest.raises(helm.HelmError, match="producer.source is required"):
        render_raw(merge(DEFAULT, {"producer": {"cronJob": {"enabled": True}}}))


# --- monitoring ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every metric family name the workers export (counters as their _total samples)."""
    import workers.metrics as m

    names = m.families()
    s = Settings(queue="test-helm-q", queue_high="test-helm-q.high", key_prefix="test-helm")
    collected = {f.name for f in m.QueueCollector(s).collect()} | {f.name for f in m.BuildInfo().collect()}
    assert collected <= names
    return names


def metric_names(expr: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\b(dicomfleet_\w+)", expr)}


def test_alerts_cover_failures_queue_age_latency_and_workers_with_exported_metrics(production, exported):
    assert "dicomfleet_queue_depth" in exported and "dicomfleet_instances_total" in exported
    rule = production.get("PrometheusRule", FULLNAME)
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"DicomfleetHighFailureRate", "DicomfleetRealtimeQueueStuck", "DicomfleetQueueBacklogOld",
                          "DicomfleetSeriesLatencyHigh", "DicomfleetWorkerDown", "DicomfleetNoWorkers",
                          "DicomfleetBrokerDown", "DicomfleetMixedBuilds", "DicomfleetDeadLetters"}
    for name, r in rules.items():
        assert metric_names(r["expr"]) <= exported, name
        assert f'job="{FULLNAME}-worker"' in r["expr"] and f'namespace="{NAMESPACE}"' in r["expr"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}"
    assert 'queue="dicomfleet.high"' in rules["DicomfleetRealtimeQueueStuck"]["expr"]
    assert "histogram_quantile(0.95" in rules["DicomfleetSeriesLatencyHigh"]["expr"]
    assert "keda_scaler_metrics_value" in rules["DicomfleetNoWorkers"]["expr"]  # scaled to zero is not "down"
    assert rules["DicomfleetBrokerDown"]["expr"].startswith("max(dicomfleet_broker_up{")  # no other rule sees it
    assert "count by (deflate) (dicomfleet_build_info{" in rules["DicomfleetMixedBuilds"]["expr"]
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for name in rules:
        assert f"### {name}" in runbook


def test_scrape_targets_and_dashboard(production, exported):
    monitor = production.get("ServiceMonitor", f"{FULLNAME}-worker")
    service = production.get("Service", f"{FULLNAME}-worker-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "worker"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics" and endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": f"{FULLNAME}-worker"} in endpoint["relabelings"]
    pod_monitor = Rendered(merge(DEFAULT, {"metrics": {"podMonitor": {"enabled": True}}})).get("PodMonitor", f"{FULLNAME}-worker")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"] == endpoint["relabelings"]
    board = json.loads(production.get("ConfigMap", f"{FULLNAME}-dashboard")["data"]["dicomfleet.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= exported and {"dicomfleet_stage_seconds", "dicomfleet_queue_oldest_age_seconds",
                                 "dicomfleet_series_seconds", "dicomfleet_bytes_out_total"} <= used
    assert board["uid"] == "dicomfleet" and len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_network_policy_allows_dns_redis_s3_and_scrapes_only(production, evaluation):
    policy = production.get("NetworkPolicy", FULLNAME)
    ports = [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["egress"]]
    assert ports == [{53}, {6380}, {9443}]
    assert policy["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.30.0.0/16"}}]
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    redis = evaluation.get("NetworkPolicy", f"{FULLNAME}-redis")
    peers = redis["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in peers


def test_bundled_redis_keeps_an_append_only_file(evaluation):
    redis = evaluation.get("StatefulSet", f"{FULLNAME}-redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"


# --- documentation of values -----------------------------------------------------------------

def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def test_every_value_has_a_param_and_the_readme_lists_them():
    text = (CHART / "values.yaml").read_text()
    params = re.findall(r"^\s*## @param (\S+) ", text, flags=re.M)
    assert len(params) == len(set(params))
    values = set(leaves(yaml.safe_load(text)))
    assert set(params) == values
    readme = (CHART / "README.md").read_text()
    assert set(re.findall(r"^\| `([^`]+)`", readme, flags=re.M)) == values


def test_keda_reaches_the_bundled_redis_and_takes_over_the_hpa_and_monitors_scrape_unready_workers():
    """KEDA's operator resolves names in its own namespace; a chart switched from its HPA to KEDA
    hands the HPA over; workers in warm shutdown (not ready) are still scraped."""
    rendered = Rendered(EVALUATION)
    scaled = rendered.get("ScaledObject", f"{FULLNAME}-worker")
    assert {t["metadata"]["address"] for t in scaled["spec"]["triggers"]} == {f"{FULLNAME}-redis.{NAMESPACE}.svc:6379"}
    assert scaled["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] == f"{FULLNAME}-worker"
    assert rendered.get("Service", f"{FULLNAME}-worker-metrics")["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("values,message", [
    ({"worker": {"softShutdownTimeout": 3600}, "config": {"visibilityTimeout": 3600}},
     "must be shorter than config.visibilityTimeout"),
    ({"metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}}, "enable one"),
])
def test_settings_that_cannot_work_together_fail_the_render(values, message):
    with pytest.raises(Exception, match=message):
        render_raw(merge(DEFAULT, values))


def test_common_annotations_reach_every_object():
    """values.yaml promises commonAnnotations on every object (the MinIO bucket Job, a hook with
    annotations of its own, merges them)."""
    rendered = Rendered(merge(EVALUATION, {"commonAnnotations": {"team": "imaging"},
                                           "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                                                       "dashboard": {"enabled": True}}}))
    missing = [key for key, obj in rendered.objects.items()
               if (obj["metadata"].get("annotations") or {}).get("team") != "imaging"]
    assert missing == []


def test_disk_scratch_is_requested_as_ephemeral_storage(default):
    worker = default.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]["containers"][0]
    v = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    assert worker["resources"]["requests"]["ephemeral-storage"] == v["scratch"]["sizeLimit"]
    assert worker["resources"]["limits"]["ephemeral-storage"] == v["scratch"]["sizeLimit"]
    assert worker["resources"]["requests"]["cpu"] == v["resources"]["requests"]["cpu"]  # the rest kept
    tmpfs = Rendered(merge(DEFAULT, {"worker": {"scratch": {"medium": "Memory"}}}))
    container = tmpfs.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "ephemeral-storage" not in container["resources"]["requests"]  # counted as memory


def test_a_long_release_name_gives_valid_object_names():
    """Kubernetes refuses names over 63 characters, and CronJob names over 52 (it appends 11 to
    the Jobs it makes): suffixes such as -worker-metrics must fit after any release name."""
    with helm.Chart.load(CHART) as chart:
        raw = chart.render(merge(EVALUATION, {"producer": {"cronJob": {"enabled": True, "schedule": "0 1 * * *"}},
                                              "metrics": {"serviceMonitor": {"enabled": True}}}),
                           name="r" * 60, namespace=NAMESPACE, is_install=True)
    names = {(doc["kind"], doc["metadata"]["name"]) for path, text in raw.items() if not path.endswith("NOTES.txt")
             for doc in yaml.safe_load_all(text) if doc}
    assert ("CronJob", "r" * 43 + "-producer") in names
    assert all(len(name) <= (52 if kind == "CronJob" else 63) for kind, name in names), sorted(names)


def test_the_network_policy_lets_the_producer_push_to_its_pushgateway():
    rendered = Rendered(merge(EVALUATION, {"metrics": {"pushgatewayUrl": "http://pushgateway.monitoring:9091"}}))
    policy = rendered.get("NetworkPolicy", FULLNAME)
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]
    assert 9091 in ports
    assert 9091 not in [p["port"] for rule in Rendered(EVALUATION).get("NetworkPolicy", FULLNAME)["spec"]["egress"]
                        for p in rule.get("ports", [])]


def test_the_producer_pod_schedules_as_the_workers_can():
    extra = {"nodeSelector": {"pool": "batch"}, "tolerations": [{"key": "batch", "operator": "Exists"}],
             "affinity": {"nodeAffinity": {}}, "priorityClassName": "low", "podLabels": {"team": "imaging"},
             "podAnnotations": {"note": "nightly"}}
    rendered = Rendered(merge(EVALUATION, {"producer": extra}))
    pod = rendered.get("Job", f"{FULLNAME}-producer-1")["spec"]["template"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod["spec"][key] == extra[key], key
    assert pod["metadata"]["labels"]["team"] == "imaging" and pod["metadata"]["annotations"]["note"] == "nightly"


def test_runbook_links_follow_the_base_url():
    base = "https://git.example.org/imaging/dicomfleet/blob/main/docs/operations.md"
    rendered = Rendered(merge(PRODUCTION, {"metrics": {"prometheusRule": {"runbookBaseUrl": base}}}))
    rules = [r for g in rendered.get("PrometheusRule", FULLNAME)["spec"]["groups"] for r in g["rules"]]
    assert {r["annotations"]["runbook_url"] for r in rules} == {f"{base}#{r['alert'].lower()}" for r in rules}
