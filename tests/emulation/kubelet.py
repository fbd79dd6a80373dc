"""What the kubelet does with a pod's spec, on this machine: the container's environment, the
image's ``ENV`` (``image.py``) beneath ``env`` and ``envFrom`` (ConfigMap and Secret
references resolved from the overlay, ``$(VAR)`` expanded as Kubernetes expands it), its
command and arguments expanded the same way, each volume mount a folder (a
PersistentVolumeClaim one folder shared by every pod that claims it, an ``emptyDir`` the
pod's own), the container's own ``/tmp``, ``/dev/termination-log`` and the folders the image
makes, folders of the pod, each declared container port a free port of
127.0.0.1 (pods do not share a network namespace; processes on one machine do), Services
reached at the ports of what serves them, and probes answered within the time they declare.

The departures from the spec that a single machine forces: Redis's URL becomes the test's
own Redis (which has no password), whatever the Secret's URL says besides its host; and a
``file://`` URL (a local repository standing in for a Git host outside the cluster) is never
read as a path under one of the pod's mounts (its ``/tmp`` emptyDir, say)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.emulation.image import Image
from tests.emulation.overlay import NAMESPACE, Overlay, OverlayError

PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "failureThreshold": 3,
                  "timeoutSeconds": 1}
CONTAINER_OWN = ("/tmp", "/dev/termination-log")  # paths in the image's own filesystem
SERVICE_HOST = re.compile(r"(?P<name>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9-]+)\.svc"
                          r"(\.cluster\.local)?(?::(?P<port>\d+))?")
# the model server opens a gRPC port the ServingRuntime does not declare: its own network
# namespace on a cluster, a free port here
UNDECLARED_PORTS = ("RETRAIN_GRPC_PORT",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable's value, ``$$`` a literal ``$``,
    an undefined reference left as written."""
    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m[1], m[0])
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def container_env(overlay: Overlay, container: Mapping[str, Any],
                  fields: Mapping[str, str]) -> dict[str, str]:
    """The environment the kubelet gives ``container``: ``envFrom`` first, then ``env`` in
    order, each value expanded with what is defined before it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        kind, ref = (("ConfigMap", source["configMapRef"]) if "configMapRef" in source
                     else ("Secret", source["secretRef"]))
        try:
            values = overlay.config(ref["name"]) if kind == "ConfigMap" else overlay.secret(
                ref["name"])
        except OverlayError:
            if ref.get("optional"):
                continue
            raise  # the kubelet: CreateContainerConfigError
        env.update({prefix + k: v for k, v in values.items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
            continue
        ref = var["valueFrom"]
        keyed = [(kind, ref[key]) for kind, key in (("Secret", "secretKeyRef"),
                                                    ("ConfigMap", "configMapKeyRef")) if key in ref]
        if keyed:
            [(kind, key_ref)] = keyed
            try:
                env[var["name"]] = overlay.value(kind, key_ref["name"], key_ref["key"])
            except OverlayError:
                if not key_ref.get("optional"):
                    raise  # the kubelet: CreateContainerConfigError
        elif "fieldRef" in ref:
            env[var["name"]] = fields[ref["fieldRef"]["fieldPath"]]
        else:
            raise ValueError(f"env {var['name']}: unsupported valueFrom {ref}")
    return env


def pod_env(image_env: Mapping[str, str], overlay: Overlay, container: Mapping[str, Any],
            fields: Mapping[str, str]) -> dict[str, str]:
    """What the container's process sees: the image's environment (``image.read``) with the
    pod's ``envFrom`` and ``env`` over it, as the kubelet hands both to the runtime."""
    return {**image_env, **container_env(overlay, container, fields)}


@dataclass
class Node:
    """This machine as the cluster's one node: the claims' folders, the Services' ports, the
    test's Redis, and the token each service account's pods are given for the API server."""

    root: Path
    redis_url: str
    kube_url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)  # service account -> bearer token
    services: dict[tuple[str, int], int] = field(default_factory=dict)  # (name, port) -> local
    mounted: dict[Path, str] = field(default_factory=dict)  # a claim's folder -> its mountPath
    pods: int = 0

    def claim(self, name: str) -> Path:
        folder = self.root / "volumes" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def expose(self, service: str, port: int, local: int) -> None:
        """Service ``service``:``port`` reaches 127.0.0.1:``local``."""
        self.services[(service, port)] = local

    def redis_service(self) -> str:
        return urlsplit(self.redis_url).netloc

    def network(self, text: str) -> str:
        """A Service's in-cluster address as this machine reaches it; a ``redis://`` URL of
        any Service: the test's Redis."""
        if text.startswith("redis://") and SERVICE_HOST.search(text):
            return self.redis_url

        def one(m: re.Match[str]) -> str:
            if m["ns"] != NAMESPACE:
                return m[0]
            port = int(m["port"] or 80)
            local = self.services.get((m["name"], port))
            return f"127.0.0.1:{local}" if local else m[0]
        return SERVICE_HOST.sub(one, text)

    def pod_path(self, text: str) -> str:
        """``text`` with the claims' folders written as the pods mount them (what a process
        here says, said as a pod would)."""
        for folder, mount in sorted(self.mounted.items(), key=lambda kv: -len(str(kv[0]))):
            text = text.replace(str(folder), mount)
        return text


@dataclass(frozen=True)
class Probed:
    """A probe's first answer: after how many seconds of the machine's clock and of the
    container's own CPU time, against the seconds the probe allows."""

    kind: str
    answered: bool
    seconds: float
    cpu_seconds: float
    allowed: float

    @property
    def in_time(self) -> bool:
        """Answered within the time allowed, on this machine's clock or (when the machine is
        busy with others' work) on the container's own CPU time."""
        return self.answered and min(self.seconds, self.cpu_seconds) <= self.allowed


@dataclass
class Container:
    """A container ready to start: its argv, environment, folders and ports on this machine."""

    name: str
    argv: list[str]
    env: dict[str, str]
    root: Path  # the pod's own folder
    ports: dict[str, int]  # declared port (its name, and its number as text) -> local port
    spec: Mapping[str, Any]
    process: subprocess.Popen[str] | None = None

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def start(self) -> Container:
        out = self.log.open("w")
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                        stderr=subprocess.STDOUT, text=True,
                                        cwd=self.root)
        self.started = time.monotonic()
        return self

    def run(self, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=self.root)
        self.log.write_text(done.stdout + done.stderr)
        return done

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends it first (``stop`` then waits)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> str:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text()

    def local(self, path: str) -> Path:
        """Where the container's ``path`` is on this machine."""
        return Path(self._paths(path))

    def _paths(self, text: str) -> str:
        return text  # replaced per container by ``Kubelet.container``

    def pod_path(self, text: str) -> str:
        """``text`` (what the process wrote) with its mounts' folders written back as the
        container sees them: what the next pod, with folders of its own, is given."""
        mounts: dict[str, Path] = getattr(self, "mounts", {})
        folders = {str(f): m.rstrip("/") for m, f in mounts.items()}
        if not folders:
            return text
        pattern = re.compile("|".join(re.escape(f) for f in sorted(folders, key=len,
                                                                    reverse=True)))
        return pattern.sub(lambda m: folders[m[0]], text)

    def port(self, declared: str | int) -> int:
        return self.ports[str(declared)]

    def probe(self, kind: str, patience: float = 4.0) -> Probed | None:
        """Polls the container's ``kind`` probe (``readinessProbe``, ``livenessProbe``) from
        its start until it answers, or until ``patience`` times the seconds it is allowed
        (initialDelaySeconds + periodSeconds x failureThreshold) have passed on a busy
        machine; None when none is declared."""
        probe = self.spec.get(kind)
        if probe is None:
            return None
        p = {**PROBE_DEFAULTS, **probe}
        allowed = p["initialDelaySeconds"] + p["periodSeconds"] * p["failureThreshold"]
        check = self._check(probe, p["timeoutSeconds"])
        answered = check()
        while not answered and time.monotonic() - self.started < allowed * patience:
            assert self.process is not None and self.process.poll() is None, (
                f"{self.name} exited ({self.process and self.process.returncode}) before its "
                f"{kind} answered:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
            answered = check()
        return Probed(kind, answered, time.monotonic() - self.started, self.cpu_seconds(),
                      allowed)

    def cpu_seconds(self) -> float:
        """The CPU time the container's process has used: the time it would have taken with
        a core of its own, whatever else this machine is running."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _check(self, probe: Mapping[str, Any], timeout: float) -> Callable[[], bool]:
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://127.0.0.1:{self.port(get['port'])}{get.get('path', '/')}"

            def http() -> bool:
                try:
                    return 200 <= httpx.get(url, timeout=timeout).status_code < 400
                except httpx.HTTPError:
                    return False
            return http
        if "tcpSocket" in probe:
            port = self.port(probe["tcpSocket"]["port"])

            def tcp() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
                    return True
                except OSError:
                    return False
            return tcp
        command = [self._paths(a) for a in probe["exec"]["command"]]
        return lambda: subprocess.run(command, env=self.env, check=False,
                                      timeout=timeout).returncode == 0


@dataclass
class Kubelet:
    """Starts a pod's containers here from the rendered overlay."""

    overlay: Overlay
    node: Node
    base_env: dict[str, str] = field(default_factory=lambda: {
        k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "TF_CONFIG"))})
    executables: dict[str, str] = field(default_factory=dict)  # image's command -> here
    image: Image = field(default_factory=lambda: Image({}, [], [], ()))

    def container(self, name: str, pod: Mapping[str, Any], container: Mapping[str, Any],
                  extra_env: Mapping[str, str] | None = None,
                  command: list[str] | None = None,
                  mounts: Mapping[str, Path] | None = None) -> Container:
        """``container`` of ``pod`` (a pod template: ``metadata`` and ``spec``), named
        ``name``; ``command`` replaces the image's entry point (a test trainer);
        ``mounts``: folders mounted by something other than a volume (KServe's model)."""
        self.node.pods += 1
        root = self.node.root / "pods" / f"{self.node.pods:03d}-{name}"
        root.mkdir(parents=True)
        spec = pod.get("spec", pod)
        folders = self._mounts(spec, container, root)
        folders.update(mounts or {})
        paths = _path_mapper(folders, root, self.image.folders)
        ports = {}
        for declared in container.get("ports", []):
            local = free_port()
            ports[str(declared["containerPort"])] = local
            if "name" in declared:
                ports[declared["name"]] = local
        env = pod_env(self.image.env, self.overlay, container, {
            "metadata.name": name, "metadata.namespace": NAMESPACE, "status.podIP": "127.0.0.1",
            "spec.serviceAccountName": spec.get("serviceAccountName", "default")})
        env = {k: self._here(v, ports, paths) for k, v in env.items()}
        env.update(extra_env or {})  # what the controllers add, as this machine has it
        for variable in UNDECLARED_PORTS:
            env.setdefault(variable, str(free_port()))
        env.update(self._service_account(spec))
        image_command = [expand(c, env) for c in container.get("command", self.image.entrypoint)]
        args = [self._here(expand(str(a), env), ports, paths)
                for a in container.get("args", [] if "command" in container else self.image.cmd)]
        entry = command or [self.executables.get(c, c) for c in image_command]
        made = Container(name, [*entry, *args], {**self.base_env, **env}, root, ports, container)
        made._paths = paths  # type: ignore[method-assign]
        made.mounts = folders
        return made

    def _here(self, value: str, ports: Mapping[str, int], paths: Callable[[str], str]) -> str:
        if value in ports:  # a declared port number, as an argument or a variable
            return str(ports[value])
        reached = self.node.network(value)
        return reached if reached == self.node.redis_url else paths(reached)

    def _service_account(self, spec: Mapping[str, Any]) -> dict[str, str]:
        """The API server as a pod reaches it: its service account's token, unless the pod
        (or its account) opts out of mounting one."""
        if not self.node.kube_url or spec.get("automountServiceAccountToken") is False:
            return {}
        account = spec.get("serviceAccountName", "default")
        return {"RETRAIN_KUBE_API_URL": self.node.kube_url,
                "RETRAIN_KUBE_TOKEN": self.node.tokens.setdefault(account, f"token-{account}")}

    def _mounts(self, spec: Mapping[str, Any], container: Mapping[str, Any],
                root: Path) -> dict[str, Path]:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        folders = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                folder = self.node.claim(volume["persistentVolumeClaim"]["claimName"])
                self.node.mounted.setdefault(folder, mount["mountPath"])
            elif "emptyDir" in volume:
                folder = root / "volumes" / mount["name"]
            else:
                raise ValueError(f"volume {mount['name']}: only claims and emptyDir are emulated")
            folder = folder / mount.get("subPath", "")
            folder.mkdir(parents=True, exist_ok=True)
            folders[mount["mountPath"]] = folder
        return folders


def _path_mapper(folders: Mapping[str, Path], root: Path,
                 image_folders: tuple[str, ...] = ()) -> Callable[[str], str]:
    """Paths inside the container written as this machine has them: under a mount, its
    folder; the image's own ``/tmp``, termination log and the folders it makes, the pod's."""
    own = CONTAINER_OWN + image_folders
    for folder in image_folders:
        Path(str(root / "fs") + folder).mkdir(parents=True, exist_ok=True)
    mounts = {m.rstrip("/"): str(f) for m, f in folders.items()}
    # a file:// URL names a repository outside the pod (the Git host a local one stands in
    # for), never a path under a mount
    pattern = re.compile(r"(?<!file://)(?:" + "|".join(
        re.escape(m) for m in sorted(mounts, key=len, reverse=True))
        + r")(?=/|$|[\"'\s,}])") if mounts else None

    def paths(text: str) -> str:  # one pass: a folder put in is not mapped again
        original = text
        if pattern:
            text = pattern.sub(lambda m: mounts[m[0]], text)
        if text == original and text.startswith(own):
            text = str(root / "fs") + text
            Path(text).parent.mkdir(parents=True, exist_ok=True)
        return text
    return paths
