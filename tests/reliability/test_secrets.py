"""No configured secret leaves a process: a whole run through ``retrain up`` (with a Redis
that has a password and goes away mid-way, an API key, webhook secrets, a Git token) and the
commands a person runs beside it; then every line they printed, every file under the home
folder and every value in Redis are searched for each secret."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import free_port, wait_for, write_dataset
from tests.reliability.test_redis_outage import redis_server
from workflows import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "redispw-Xe3Rj8Gu"
SECRETS = {
    "RETRAIN_API_KEYS": "apikey-Q7mX2v9LpR",
    "RETRAIN_GITHUB_WEBHOOK_SECRET": "ghsecret-4TnW8bY1",
    "RETRAIN_GITLAB_WEBHOOK_TOKEN": "gltoken-Zr5Kc2Hq",
    "RETRAIN_S3_WEBHOOK_TOKEN": "s3token-Vb6Np3Ds",
    "RETRAIN_GIT_TOKEN": "gittoken-Mf9Lt4Wa",
}
URL_TOKEN = "urltoken-Hc7Yq1Ze"  # a token written inside a Git URL


def _retrain(*args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "retrain.cli", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def _everything_in(client):
    """Every key and value Redis holds, as text."""
    found = []
    for key in client.scan_iter("*"):
        kind = client.type(key).decode()
        value = {"string": lambda k: client.get(k),
                 "hash": lambda k: client.hgetall(k),
                 "list": lambda k: client.lrange(k, 0, -1),
                 "set": lambda k: client.smembers(k),
                 "zset": lambda k: client.zrange(k, 0, -1),
                 "stream": lambda k: client.xrange(k)}[kind](key)
        found.append(f"{key!r} {value!r}")
    return "\n".join(found)


def test_no_secret_reaches_a_log_line_an_output_a_file_or_redis(tmp_path, standin_trainer):
    port, events_port = free_port(), free_port()
    server = redis_server(port, tmp_path, "--requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    home = tmp_path / "home"
    env = {**os.environ, **SECRETS, "RETRAIN_HOME": str(home), "RETRAIN_REDIS_URL": url,
           "RETRAIN_EVENTS_PORT": str(events_port), "RETRAIN_SERVE_PORT": str(free_port()), "RETRAIN_GRPC_PORT": "0", "RETRAIN_UI_PORT": "0",
           "RETRAIN_OFFLINE": "1"}
    data = write_dataset(tmp_path / "data", train=300, test=100)
    client = redis.Redis.from_url(url)
    wait_for(lambda: _pings(client), 10)
    printed = []
    log = (tmp_path / "up.log").open("w")
    stack = subprocess.Popen([sys.executable, "-m", "retrain.cli", "up"], env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    health = f"http://127.0.0.1:{events_port}/healthz"
    try:
        wait_for(lambda: _status(health) == 200, 120)
        published = _retrain("publish", "training.requested", "--data", json.dumps(
            {"uri": str(data), "parameters": {"models": ["cnn"], "steps_per_epoch": 5,
                                              "batch_size": 16}}), env=env)
        assert published.returncode == 0, published.stderr
        printed.append(published.stdout + published.stderr)
        wrong_key = httpx.post(f"http://127.0.0.1:{events_port}/events", content=b"{}",
                               headers={"Authorization": "Bearer not-a-key",
                                        "Content-Type": "application/cloudevents+json"})
        assert wrong_key.status_code == 401
        printed.append(wrong_key.text)

        def succeeded():
            runs = record.runs_since(client, 0)
            return runs and all(run["status"] == "succeeded" for run in runs)

        wait_for(succeeded, 240)
        wait_for(lambda: any(client.scan_iter("retrain:champion:*")), 60)  # promoted

        server.terminate()  # Redis goes away under the stack, and comes back
        server.wait()
        wait_for(lambda: _status(health) == 503, 30)
        printed.append(httpx.get(health, timeout=10).text)
        printed.append(_retrain("status", env=env, timeout=60).stderr)  # cannot reach Redis
        server = redis_server(port, tmp_path, "--requirepass", PASSWORD)
        wait_for(lambda: _status(health) == 200, 60)

        for args in (["status"], ["status", "--json"], ["events", "dead-letters", "ls"]):
            done = _retrain(*args, env=env)
            printed.append(done.stdout + done.stderr)
        watcher = subprocess.Popen(  # a Git remote that cannot be reached, token in the URL
            ["timeout", "60", sys.executable, "-m", "retrain.cli", "watch", "--git",
             f"http://x-access-token:{URL_TOKEN}@127.0.0.1:1/r.git", "--port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        told = []
        for line in watcher.stderr:  # until it says the fetch failed (or it ends)
            told.append(line)
            if "git fetch" in line:
                break
        watcher.terminate()
        rest, err = watcher.communicate(timeout=30)
        printed.append(rest + "".join(told) + err)
        assert "git fetch" in "".join(told)  # it did fail, and said so
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=60)
        log.close()
        stored = _everything_in(client) if _pings(client) else ""
        server.terminate()
        server.wait()
    lines = (tmp_path / "up.log").read_text()
    files = {path: path.read_text(errors="replace") for path in Path(home).rglob("*")
             if path.is_file() and path.suffix in (".log", ".json", ".txt", ".yaml")}
    assert "is unavailable" in lines and "is back" in lines  # the outage was logged
    assert "Traceback" not in lines
    assert "train.log" in {p.name for p in files} and stored  # there was much to search
    for secret in (PASSWORD, URL_TOKEN, *SECRETS.values()):
        assert secret not in lines, f"{secret} in retrain up's output"
        for text in printed:
            assert secret not in text, f"{secret} printed: {text[:500]}"
        for path, text in files.items():
            assert secret not in text, f"{secret} written to {path}"
        assert secret not in stored, f"{secret} stored in Redis"


def _pings(client):
    try:
        return client.ping()
    except redis.RedisError:
        return False


def _status(url):
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return None
