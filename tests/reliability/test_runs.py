"""``retrain up`` killed mid-training, on real processes: its trainers die with it, and the
next start resumes the run (the old one closed with the reason) and it finishes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from events import make_event
from events.codec import encode
from services.trainer import progress
from tests.conftest import wait_for, write_dataset
from workflows import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STACK = """
import sys, threading
from rich.console import Console
from retrain.commands.support import load_settings
from retrain.stack import LocalStack
with LocalStack(load_settings(), console=Console(quiet=True)) as stack:
    print(stack.events_url, flush=True)
    threading.Event().wait()
"""


def start_stack(env):
    proc = subprocess.Popen([sys.executable, "-c", STACK], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    return proc, proc.stdout.readline().strip()


def children(pid):
    """Every thread's children (a trainer is the runner thread's child)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def alive(pid):
    try:
        # the state follows the command name in parentheses, which may hold spaces
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_stack_leaves_no_trainer_and_its_run_is_resumed_at_the_next_start(
        tmp_path, redis_handle, r, standin_trainer):
    data = write_dataset(tmp_path / "data", train=600, test=200)
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"),
           "RETRAIN_REDIS_URL": redis_handle.url, "RETRAIN_SERVE_PORT": "0",
           "RETRAIN_GRPC_PORT": "0", "RETRAIN_EVENTS_PORT": "0", "RETRAIN_UI_PORT": "0",
           "RETRAIN_OFFLINE": "1",
           "RETRAIN_STANDIN_STEP_SECONDS": "0.1",  # the test trainer: still training when killed
           # the killed run's claim on its training lapses in 2 s, not 30, for the resumed run
           "RETRAIN_TRAINING_LEASE_SECONDS": "2"}
    stack, url = start_stack(env)
    try:
        event = make_event("training.requested",
                           {"uri": str(data), "parameters": {"models": ["cnn"], "epochs": 1,
                                                             "steps_per_epoch": 30,
                                                             "batch_size": 16}},
                           source="test/reliability", id="crash-1")
        headers, body = encode(event)
        assert httpx.post(url, content=body, headers=headers).status_code == 202

        def training():
            found = progress.read_many(r, progress.trainings(r), points=False).values()
            return any(p.state == "training" for p in found)

        wait_for(training, 120)
        trainers = children(stack.pid)
        assert trainers, "the stack should have a trainer process"
        [first] = record.runs_since(r, 0)
    finally:
        stack.send_signal(signal.SIGKILL)
        stack.wait()
    wait_for(lambda: not any(alive(pid) for pid in trainers), 30)  # died with their parent

    stack, url = start_stack(env)
    try:
        def runs():
            return {s["run_id"]: s for s in record.runs_since(r, 0)}

        wait_for(lambda: len(runs()) == 2 and all(s["status"] != "running" for s in runs().values()),
                 240)
        old = runs()[first["run_id"]]
        [new] = [s for s in runs().values() if s["run_id"] != first["run_id"]]
        assert old["status"] == "failed"
        assert old["error"] == f"interrupted: its runner died; resumed as {new['run_id']}"
        assert new["status"] == "succeeded" and new["resumes"] == first["run_id"]
        assert new["event_id"] == "crash-1" and new["models"]["cnn"]["status"] == "trained"
        wait_for(lambda: r.llen("retrain:queue:processing") == 0, 10)  # ended: taken off
        assert r.llen("retrain:queue") == 0
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=60)
