"""What Argo does with the WorkflowTemplate's templates, for tests that run its steps for real:
each template's own command line from the rendered template, with Argo's placeholders filled
in, run by the real CLI in a process of its own (a pod's ``/tmp/outputs`` and
``/dev/termination-log`` are folders of the test, the shared volume is the test's home), and
each step's output parameters read from the files Argo reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from workflows.definition import HOME, OUTPUTS, TERMINATION_LOG, render

RETRAIN = str(Path(sys.executable).with_name("retrain"))  # the console script the image runs
NAMESPACE = "retrain"  # what Argo substitutes for {{workflow.namespace}}


def pod_env(home: Path, redis_url: str, **more: str) -> dict[str, str]:
    """A pod's environment: the shared volume and Redis (no setting of this machine's)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")},
            "RETRAIN_HOME": str(home), "RETRAIN_REDIS_URL": redis_url, **more}


def template() -> dict:
    return yaml.safe_load(render())


@dataclass
class Step:
    code: int
    outputs: dict[str, str]
    message: str  # the container's termination message ("" when none was written)
    stderr: str


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{\{([^}]+)\}\}", lambda m: values[m[1]], text)


class Argo:
    """One Workflow of the template: its arguments (the template's defaults, then what the
    Sensor would pass), substituted with each task's inputs into the container's args."""

    def __init__(self, home: Path, redis_url: str, folder: Path, name: str,
                 **arguments: str) -> None:
        spec = template()
        self.templates = {t["name"]: t for t in spec["spec"]["templates"]}
        self.arguments = {p["name"]: p.get("value", "")
                          for p in spec["spec"]["arguments"]["parameters"]}
        self.arguments.update(arguments)
        self.home, self.folder, self.name = home, folder, name
        self.env = pod_env(home, redis_url)
        self.runs = 0
        self.uid = f"uid-of-{name}"  # {{workflow.uid}}: the Workflow object's own
        self.status = "Failed"  # {{workflow.status}}, as the exit handler is told it

    def values(self, **inputs: str) -> dict[str, str]:
        return {**{f"workflow.parameters.{k}": v for k, v in self.arguments.items()},
                "workflow.name": self.name, "workflow.namespace": NAMESPACE,
                "workflow.uid": self.uid, "workflow.status": self.status,
                **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}

    def run(self, name: str, env: dict[str, str] | None = None, here: bool = False,
            **inputs: str) -> Step:
        """Run the container template ``name`` with its task's ``inputs`` (all it declares);
        ``here``: by the same CLI in this process (typer's runner), where TensorFlow is
        loaded already (a process of its own takes seconds to load it again)."""
        self.runs += 1
        pod = self.folder / f"{self.name}-{self.runs}-{name}"  # each pod its own /tmp, /dev
        pod.mkdir(parents=True)
        container = self.templates[name]["container"]
        declared = {p["name"] for p in self.templates[name].get("inputs", {}).get("parameters", [])}
        inputs = {**self.fetched(declared), **inputs}
        assert set(inputs) == declared, name
        values = self.values(**inputs)
        args = [self._local(substitute(a, values), pod) for a in container["args"]]
        if here:
            done = _here(args, {**self.env, **(env or {})})
        else:
            done = subprocess.run([*container["command"], *args], env={**self.env, **(env or {})},
                                  capture_output=True, text=True, timeout=180,
                                  executable=RETRAIN, check=False)
        outputs = {}
        for parameter in self.templates[name].get("outputs", {}).get("parameters", []):
            path = Path(parameter["valueFrom"]["path"].replace(OUTPUTS, str(pod / "outputs")))
            if path.is_file():  # Argo saves the outputs whatever the exit code
                outputs[parameter["name"]] = path.read_text()
        log = pod / "termination-log"
        return Step(done.returncode, outputs, log.read_text() if log.is_file() else "",
                    done.stderr)

    def fetched(self, declared: set[str]) -> dict[str, str]:
        """The inputs a step takes from the fetch task's outputs (``data-uri``, ``event``),
        as a fetch with no ``--fetch`` outputs them: the workflow's own arguments."""
        return {k: self.arguments[k] for k in ("data-uri", "event") if k in declared}

    def tfjob(self, **inputs: str) -> dict:
        """The TFJob the ``create-training`` step would create for ``inputs`` (its name, owner
        and backoff limit aside: ``workflows.tfjob.owned_job`` adds them)."""
        args = self.templates["create-training"]["container"]["args"]
        manifest = args[args.index("--manifest") + 1]
        return yaml.safe_load(substitute(manifest, self.values(**inputs)))

    def train(self, trainer: tuple[str, ...], env: dict[str, str], **inputs: str) -> Step:
        """Run the TFJob's worker container for ``inputs`` with ``trainer`` as its command
        (one worker: the chief)."""
        [container] = self.tfjob(**inputs)["spec"]["tfReplicaSpecs"]["Worker"]["template"][
            "spec"]["containers"]
        args = [self._local(a, self.folder) for a in container["args"]]
        done = subprocess.run([*trainer, *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=300, check=False)
        return Step(done.returncode, {}, "", done.stderr)

    def _local(self, arg: str, pod: Path) -> str:
        """The pod's paths as this machine has them: the shared volume is the home."""
        if arg == OUTPUTS:
            return str(pod / "outputs")
        if arg == TERMINATION_LOG:
            return str(pod / "termination-log")
        return arg.replace(HOME, str(self.home)) if arg.startswith(HOME) else arg


def _here(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``retrain ARGS`` run by typer's runner in this process, with the pod's environment."""
    from typer.testing import CliRunner

    from retrain.cli import app

    unset = {k: None for k in os.environ if k.startswith("RETRAIN_") and k not in env}
    result = CliRunner().invoke(app, args, env={**unset, **env})
    code = result.exit_code if result.exception is None or isinstance(
        result.exception, SystemExit) else 1
    return subprocess.CompletedProcess(args, code, result.stdout, result.output)
