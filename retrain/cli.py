"""``retrain``: one console script for every service and step.

This module only assembles the command groups (``retrain/commands/``) and turns expected
errors into one line and an exit code. Imports are lazy so quick commands (publish, status)
start fast; TensorFlow loads only where it is needed.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from core.errors import RetrainError
from core.redact import redact
from retrain.commands import gate, pipeline, standalone
from retrain.commands.cache import cache_app
from retrain.commands.events import events_app
from retrain.commands.golden import golden_app
from retrain.commands.lineage import lineage
from retrain.commands.replay import replay
from retrain.commands.reproduce import reproduce
from retrain.commands.selector import select_app
from retrain.commands.step import step_app
from retrain.commands.step_fetch import fetch
from retrain.commands.step_training import check_training, create_training, finish, wait_training
from retrain.commands.support import console
from retrain.commands.workflow import workflow_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Event-driven retraining for Fashion-MNIST.")

for command in (pipeline.demo, pipeline.up, pipeline.run, pipeline.publish,
                standalone.serve, standalone.watch, pipeline.ingest, standalone.train):
    app.command()(command)
app.command("seed")(pipeline.seed)
app.command()(pipeline.status)
app.command()(gate.validate)
app.command()(gate.approve)
app.command()(standalone.ui)
app.command()(lineage)
app.command()(replay)
app.command()(reproduce)
app.add_typer(cache_app, name="cache")
app.add_typer(events_app, name="events")
app.add_typer(golden_app, name="golden")
step_app.command("check-training")(check_training)
step_app.command("wait-training")(wait_training)
step_app.command("create-training")(create_training)
step_app.command("finish")(finish)
step_app.command("fetch")(fetch)
app.add_typer(step_app, name="step")
app.add_typer(select_app, name="select")
app.add_typer(workflow_app, name="workflow")


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM (systemd, ``docker stop``, Kubernetes) ends a command as Ctrl-C does: by
    unwinding, so every ``finally`` runs and an embedded Redis is stopped, not orphaned."""
    raise SystemExit(128 + signum)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's own errors, as typer raises them (recent typer vendors its own copy of click,
    whose classes are not the ``click`` package's)."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        pass
    else:
        kinds.append(ClickException)
    return tuple(kinds)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # not its fork() notices on every training
    # read when grpc is imported: before anything here imports it (services/serving/lifespan.py
    # says why: a trainer forked after the gRPC server started died of SIGABRT)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        code = app(standalone_mode=False)  # click returns Exit codes instead of raising here
    except RetrainError as exc:
        console.print(f"[bold red]error:[/] {redact(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like: one message, no traceback
        if isinstance(exc, _usage_errors()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
