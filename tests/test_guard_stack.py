"""The live guard in the local stack (``retrain up``'s ``LocalStack``), on the stack's own
model server under ~100 requests/s: a version that answers errors, promoted into the stack,
is rolled back by the stack's own guard, narrated, shown in its lineage and the decision rows,
its model refused until ``retrain approve --version N``; a good version after it settles,
narrated too. With ``RETRAIN_GUARD=false`` no guard runs and nothing is rolled back."""

import getpass
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from core.settings import MODEL_NAME, Settings
from retrain.stack import LocalStack
from services.selector.backends import LocalBackend
from services.selector.champion import Champion
from services.selector.guard_store import guard_state
from tests.conftest import wait_for
from tests.services.selector.live_load import Load, altered, nan_weight

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _settings(redis_handle, home: Path, **guard) -> Settings:
    return Settings(home=home, redis_url=redis_handle.url, serve_port=0, grpc_port=0,
                    ui_port=0, events_port=0, offline=True, rate_limit_anon=0,
                    guard_poll_seconds=0.05, guard_window_requests=300, guard_min_requests=20,
                    guard_max_p99_ratio=10,  # a swap's first answers are slow; not under test
                    _env_file=None, **guard)


def _promote(stack: LocalStack, model_uri: Path, run_id: str) -> int:
    """``model_uri`` made the stack's champion as a promotion leaves it (the gate is not
    under test: the guard after it is), and served by the stack's model server."""
    backend = LocalBackend(stack.settings.model_repo, MODEL_NAME)
    staged = backend.stage(str(model_uri), backend.next_version())
    backend.publish(staged)
    current = stack.champions.get()
    generation = current.generation if current else 0
    assert stack.champions.replace(generation, Champion(
        version=staged.version, model_uri=staged.location, model_type="cnn", accuracy=0.8,
        dataset_digest="d", dataset_uri="/ds", run_id=run_id, generation=generation + 1))
    stack.champions.audit({"type": "model.promoted", "run_id": run_id, "model_type": "cnn",
                           "version": staged.version, "reason": "promoted by the test"})
    wait_for(lambda: (_served(stack) or 0) >= staged.version)  # (a rollback may follow fast)
    return staged.version


def _served(stack: LocalStack) -> int | None:
    answer = httpx.get(f"{stack.serve_url}/v1/models/{MODEL_NAME}", timeout=5)
    return int(answer.json()["model_version"]) if answer.status_code == 200 else None


def _state(stack: LocalStack, version: int) -> str | None:
    found = guard_state(stack.redis.client, stack.champions.scope, version)
    return found["state"] if found else None


@pytest.fixture
def models(tmp_path, trained_models):
    runs = tmp_path / "home" / "runs"
    good = Path(trained_models.copy("good", runs / "run-1" / "cnn").model_uri)
    return good, altered(good, runs / "run-2" / "cnn", nan_weight)  # answers 500 to everything


def test_a_version_failing_in_the_stack_is_rolled_back_by_its_guard_then_approved(
        redis_handle, r, tmp_path, models):
    good, bad = models
    out = io.StringIO()
    settings = _settings(redis_handle, tmp_path / "home")
    with LocalStack(settings, console=Console(file=out, width=500), narrate=True) as stack:
        assert stack.guard is not None
        _promote(stack, good, "run-1")
        load = Load(stack.serve_url).start()
        try:
            wait_for(lambda: len(load.answers) >= 60)  # version 1's window: the baseline
            assert _promote(stack, bad, "run-2") == 2
            wait_for(lambda: _state(stack, 2) == "rolledback", 30)
            wait_for(lambda: _served(stack) == 3)  # version 1's model, as version 3
            assert stack.champions.get().run_id == "run-1"
            wait_for(lambda: "ROLLED BACK" in out.getvalue())
            said = out.getvalue()
            assert "version 2 ROLLED BACK by the live guard (consecutive_errors: " in said
            assert "version 3 serves now (version 1's model)" in said
            _lineage_and_decisions_show_the_rollback(stack)
            _approve_lets_it_be_judged_again(stack)
            assert _promote(stack, good, "run-4") == 4  # a good version: it settles
            wait_for(lambda: _state(stack, 4) not in (None, "watching"), 30)
            found = guard_state(stack.redis.client, stack.champions.scope, 4)
            assert found["state"] == "settled", (found.get("reason"), found.get("window"), found.get("baseline"))
            wait_for(lambda: "version 4 settled: " in out.getvalue())
        finally:
            load.stop()
    assert "against version 3's" in out.getvalue()


def _lineage_and_decisions_show_the_rollback(stack: LocalStack) -> None:
    api = httpx.Client(base_url=stack.ui_url.rstrip("/"), timeout=30)
    guard = api.get("/api/lineage/2").json()["guard"]
    assert (guard["state"], guard["rule"], guard["restored_version"]) == (
        "rolledback", "consecutive_errors", 3)
    assert guard["window"]["errors"] >= 5 and guard["baseline"]["requests"] >= 20
    assert guard["at"] and guard["summary"].startswith(
        "rolled back by the live guard (consecutive_errors); version 3 replaced it")
    page = api.get("/lineage/2").text
    assert "<b id=guard-rule>consecutive_errors</b>" in page
    assert "<span id=guard-replaced-by><a class=lineage href='/lineage/3'>3</a></span>" in page
    assert api.get("/api/lineage/3").json()["guard"]["state"] is None  # a rollback: unwatched
    rows = api.get("/models").text
    assert "<span class='tag rolledback'>rolledback</span>" in rows
    assert "<div class='figures live'>" in rows and "consecutive_errors" in rows
    assert "live guard: <span class='tag rolledback'>rolledback</span>" in rows  # on v2's row


def _approve_lets_it_be_judged_again(stack: LocalStack) -> None:
    env = {**os.environ, "RETRAIN_HOME": str(stack.settings.home),
           "RETRAIN_REDIS_URL": stack.settings.redis_url}

    def approve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "retrain.cli", "approve", *args],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    over_http = approve("--version", "2", "--events-url", stack.events_url)
    assert over_http.returncode == 2 and "where RETRAIN_REDIS_URL reaches" in over_http.stderr
    done = approve("v2", "--by", "ticket 7")
    assert done.returncode == 0, done.stderr
    assert "approved version 2's model" in done.stdout and "consecutive_errors" in done.stdout
    entry = stack.champions.decisions()[-1]
    assert (entry["type"], entry["version"], entry["by"], entry["note"]) == (
        "approved", 2, f"user:{getpass.getuser()}", "ticket 7")
    again = approve("--version", "2")
    assert again.returncode == 1 and "its model was approved already" in again.stderr
    never = approve("--version", "1")
    assert never.returncode == 1 and "never watched it" in never.stderr
    assert "approved since by user:" in httpx.get(
        f"{stack.ui_url}api/lineage/2").json()["guard"]["summary"]


def test_with_the_guard_off_nothing_watches_and_nothing_is_rolled_back(
        redis_handle, r, tmp_path, models):
    good, bad = models
    settings = _settings(redis_handle, tmp_path / "home", guard=False)
    with LocalStack(settings, console=Console(quiet=True)) as stack:
        assert stack.guard is None
        _promote(stack, good, "run-1")
        _promote(stack, bad, "run-2")
        load = Load(stack.serve_url).start()
        try:
            wait_for(lambda: load.failed() >= 20)  # four times the guard's fast rule
        finally:
            load.stop()
        assert stack.champions.get().version == 2 and _served(stack) == 2
        assert _state(stack, 2) is None
        assert not [d for d in stack.champions.decisions() if d["type"] == "rolledback"]
