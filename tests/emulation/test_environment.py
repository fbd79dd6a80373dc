"""What a pod of an overlay is given, read as the kubelet gives it (``kubelet.container_env``):
every one of our containers that mounts the shared data volume has its home there, or what
it writes and reads (the selector's runs folder, which admits only models trained inside it;
the watcher's state) is somewhere no other pod sees."""

from __future__ import annotations

import pytest

from tests.emulation.kubelet import container_env
from tests.emulation.overlay import Overlay

DATA_CLAIM = "retrain-data"


def _pods(overlay: Overlay):
    for deployment in overlay.all("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        yield deployment["metadata"]["name"], spec


@pytest.mark.parametrize("name", ["local", "local-bucket"])  # production: no Secret shipped
def test_every_container_mounting_the_data_volume_has_its_home_there(name):
    overlay = Overlay.render(name)
    wrong = []
    for pod, spec in _pods(overlay):
        claims = {v["name"] for v in spec.get("volumes", [])
                  if v.get("persistentVolumeClaim", {}).get("claimName") == DATA_CLAIM}
        for container in spec["containers"]:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])
                      if m["name"] in claims]
            if not mounts:
                continue
            home = container_env(overlay, container, {}).get("RETRAIN_HOME")
            if home != mounts[0]:
                wrong.append(f"{pod}/{container['name']}: RETRAIN_HOME={home!r}, the data "
                             f"volume at {mounts[0]}")
    assert not wrong, wrong
