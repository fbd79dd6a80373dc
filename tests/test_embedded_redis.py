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
