"""What a pod of an overlay sees, read as a real pod sees it: the image's environment (the
Dockerfile's final stage, ``image.read``) with the pod's ``envFrom`` (ConfigMaps, Secrets) and
``env`` over it (``kubelet.pod_env``). Every one of our containers that mounts the shared
data volume has its home there, or what it writes and reads (the selector's runs folder, which
admits only models trained inside it; the watcher's state) is somewhere no other pod sees."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulation.image import DockerfileError, read
from tests.emulation.kubelet import pod_env
from tests.emulation.overlay import ROOT, Overlay

DATA_CLAIM = "retrain-data"


def _workloads(overlay: Overlay) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, pod spec, container) for every Deployment's container and every container
    template of every WorkflowTemplate (its pods get the template's volumes)."""
    for deployment in overlay.all("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"]:
            yield f"Deployment {deployment['metadata']['name']}", spec, container
    for template in overlay.all("WorkflowTemplate"):
        for step in template["spec"]["templates"]:
            if "container" in step:
                yield (f"WorkflowTemplate {template['metadata']['name']}/{step['name']}",
                       template["spec"], step["container"])


@pytest.mark.parametrize("name", ["local", "local-bucket"])  # production: no Secret shipped
def test_every_container_mounting_the_data_volume_has_its_home_there(name):
    overlay = Overlay.render(name)
    image = read(ROOT / "Dockerfile")
    wrong, checked = [], 0
    for workload, spec, container in _workloads(overlay):
        claims = {v["name"] for v in spec.get("volumes", [])
                  if v.get("persistentVolumeClaim", {}).get("claimName") == DATA_CLAIM}
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])
                  if m["name"] in claims]
        if not mounts:
            continue
        checked += 1
        home = pod_env(image.env, overlay, container, {}).get("RETRAIN_HOME")
        if home != mounts[0]:
            wrong.append(f"{workload}: RETRAIN_HOME={home!r}, the data volume at {mounts[0]}")
    assert checked >= 3 and not wrong, (checked, wrong)


def test_the_pods_env_is_laid_over_the_images(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM base AS build\nENV ONLY_IN_BUILD=1\n"
                          "FROM python:3.11-slim\n"
                          "# a comment\n"
                          "ENV PATH=/opt/venv/bin:$PATH \\\n"
                          "    HOME_DIR=\"/var/lib/x y\" \\\n"
                          "    LEVEL=2\n"
                          "ENV DERIVED=${HOME_DIR}/runs\n"
                          "ENV LEGACY the rest of it\n"
                          "RUN mkdir -p /var/lib/x && chown 1 /var/lib/x\n"
                          'ENTRYPOINT ["retrain"]\nCMD ["--help"]\n')
    image = read(dockerfile, {"PATH": "/usr/bin"})
    assert image.env == {"PATH": "/opt/venv/bin:/usr/bin", "HOME_DIR": "/var/lib/x y",
                         "LEVEL": "2", "DERIVED": "/var/lib/x y/runs",
                         "LEGACY": "the rest of it"}
    assert (image.entrypoint, image.cmd, image.folders) == (["retrain"], ["--help"],
                                                            ("/var/lib/x",))
    overlay = Overlay("t", ({"kind": "ConfigMap", "metadata": {"name": "c"},
                             "data": {"LEVEL": "3"}},))
    container = {"envFrom": [{"configMapRef": {"name": "c"}}],
                 "env": [{"name": "HOME_DIR", "value": "/data"}]}
    assert pod_env(image.env, overlay, container, {}) == {**image.env, "LEVEL": "3",
                                                          "HOME_DIR": "/data"}


def test_an_env_word_that_is_not_a_pair_is_refused(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x\nENV A=1 B\n")
    with pytest.raises(DockerfileError, match="'B' is not KEY=VALUE"):
        read(dockerfile)
