"""Who this training process is: TF_CONFIG parsing (pure), and the local multi-worker
launcher that gives N processes on 127.0.0.1 the TF_CONFIG a TFJob's operator would.

No TensorFlow import here: the launcher only starts and watches processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.children import dies_with_us
from core.errors import RetrainError
from services.trainer.options import LOCAL_ENTRY


class ClusterError(RetrainError):
    """The cluster description is unusable, or a worker failed."""


@dataclass(frozen=True)
class Role:
    """This process's place in a (possibly one-process) training cluster."""

    task_type: str = "worker"
    index: int = 0
    workers: int = 1  # processes that train together (chief included)
    has_chief_task: bool = False

    @property
    def distributed(self) -> bool:
        return self.workers > 1

    @property
    def is_chief(self) -> bool:
        """The chief saves the model; with no ``chief`` task, worker 0 is the chief (as in
        MultiWorkerMirroredStrategy and the Training Operator)."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0
                                             and not self.has_chief_task)

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.index}"


def role_from_tf_config(raw: str | None) -> Role:
    """The role TF_CONFIG describes (single process when unset). Pure."""
    if not raw:
        return Role()
    try:
        config = json.loads(raw)
        cluster: Mapping[str, Sequence[str]] = config["cluster"]
        task = config["task"]
        task_type, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"TF_CONFIG is not a usable cluster description: {exc!r}") from None
    if task_type not in cluster or not 0 <= index < len(cluster[task_type]):
        raise ClusterError(f"TF_CONFIG: task {task_type}:{index} is not in the cluster {dict(cluster)}")
    trainers = sum(len(cluster.get(kind, ())) for kind in ("chief", "worker"))
    return Role(task_type, index, trainers, has_chief_task="chief" in cluster)


def tf_config(addresses: Sequence[str], index: int) -> str:
    """TF_CONFIG for worker ``index`` of a cluster of workers at ``addresses``. Pure."""
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _echo_progress(log: Path, offset: int) -> int:
    """Copy the chief's progress lines (``[model worker-0] step ...``) to our standard error."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return offset
    complete = chunk.rfind(b"\n") + 1
    for raw in chunk[:complete].splitlines():
        if raw.startswith(b"["):
            print(raw.decode(errors="replace"), file=sys.stderr, flush=True)
    return offset + complete


def launch_local(argv: Sequence[str], workers: int, log_dir: Path,
                 env: Mapping[str, str] | None = None, poll: float = 0.2) -> str:
    """Run ``retrain train`` (``argv`` without ``--workers``) as ``workers`` processes on
    127.0.0.1, each with its TF_CONFIG; returns the chief's standard output.

    If any worker fails, the others are stopped at once (a collective would wait for the dead
    one forever) and the error names the worker and ends with its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(workers)]
    threads = max(1, (os.cpu_count() or 2) // workers)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    chief_out = log_dir / "worker-0.out"
    try:
        for index in range(workers):
            log = log_dir / f"worker-{index}.log"
            child_env = {**os.environ, **(env or {}), "TF_CONFIG": tf_config(addresses, index),
                         "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}
            with log.open("wb") as err, chief_out.open("wb") if index == 0 else err as out:
                procs.append((subprocess.Popen([*LOCAL_ENTRY, *argv], env=child_env,
                                               stdout=out, stderr=err,
                                               preexec_fn=dies_with_us()), log))  # noqa: PLW1509
        echoed = 0
        while True:
            echoed = _echo_progress(procs[0][1], echoed)
            codes = [p.poll() for p, _ in procs]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index = failed[0]
                tail = procs[index][1].read_text(errors="replace").strip().splitlines()[-5:]
                raise ClusterError(f"worker {index} of {workers} exited with code {codes[index]}; "
                                   f"stopped the others. Its log ends: " + " | ".join(tail))
            if all(code == 0 for code in codes):
                return chief_out.read_text()
            time.sleep(poll)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
