"""An embedded Redis lives exactly as long as the process that started it: stopped with its
snapshot saved when a service is stopped with SIGTERM (systemd, docker stop, Kubernetes), as
with Ctrl-C, and gone when the service is SIGKILLed; a second process of the same home
shares it instead of starting another on the same files."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from core.redis_store import open_redis
from tests.conftest import free_port, wait_for

pytestmark = [pytest.mark.integration]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_service_leaves_no_redis_server_behind(tmp_path, how):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_REDIS_URL"}
    env["RETRAIN_HOME"] = str(home)
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "select", "serve",
                             "--port", str(free_port())], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    record = home / "redis" / "server.json"
    try:
        wait_for(record.exists, 60)
        info = json.loads(record.read_text())
        client = redis.Redis.from_url(info["url"])
        wait_for(lambda: client.ping(), 30)
        client.set("kept", "yes")
        time.sleep(1.0)  # the service is up and serving
        proc.send_signal(how)
        code = proc.wait(timeout=60)
        output = proc.stdout.read()
    finally:
        proc.kill()
    wait_for(lambda: not _alive(info["pid"]), 10)
    if how == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM, output
        assert "Traceback" not in output and "shutdown failed" not in output.lower(), output
        assert not record.exists()
    with open_redis(None, home) as handle:  # saved on the way down, in both cases
        assert handle.client.get("kept") == b"yes"


def test_a_second_process_shares_the_homes_server(tmp_path):
    with open_redis(None, tmp_path) as first:
        first.client.set("a", "1")
        pid = json.loads((tmp_path / "redis" / "server.json").read_text())["pid"]
        with open_redis(None, tmp_path) as second:
            assert second.url == first.url and second.client.get("a") == b"1"
        assert first.client.ping()  # the borrower did not stop it
    assert not _alive(pid)


@pytest.mark.slow
@pytest.mark.parametrize("inherited", ["default", "SIGINT ignored"])
def test_ctrl_c_on_retrain_up_stops_its_workers_before_its_redis(tmp_path, inherited):
    """Ctrl-C at a terminal signals the whole foreground process group, the embedded
    redis-server included: the stack's workers must be stopped before their Redis goes, so a
    clean stop warns of no Redis outage. Started with SIGINT ignored (a background job of a
    non-interactive shell), Python would raise no KeyboardInterrupt: it stops all the same."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited != "default" else None
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_REDIS_URL"}
    env.update(RETRAIN_HOME=str(tmp_path / "home"), RETRAIN_OFFLINE="1", RETRAIN_SERVE_PORT="0",
               RETRAIN_GRPC_PORT="0", RETRAIN_EVENTS_PORT="0", RETRAIN_UI_PORT="0")
    up = subprocess.Popen([sys.executable, "-m", "retrain.cli", "up", "--data",
                           str(tmp_path / "data")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          preexec_fn=ignore)
    told = []
    try:
        deadline = time.monotonic() + 120
        while not told or "Ctrl-C to stop" not in told[-1]:
            told.append(up.stderr.readline())
            assert time.monotonic() < deadline and up.poll() is None, "".join(told)
        time.sleep(1.0)  # the workers are waiting on Redis
        os.killpg(up.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        _, rest = up.communicate(timeout=60)
    finally:
        up.kill()
    told.append(rest)
    assert up.returncode == 0, "".join(told)
    assert "unavailable" not in "".join(told) and "Traceback" not in "".join(told), "".join(told)
    assert not (tmp_path / "home" / "redis" / "server.json").exists()  # stopped by its owner
