"""What every command shares: the settings, logging, the console, run parameters."""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from core import redact
from core.errors import ConfigurationError
from core.settings import Settings
from core.tf_start import native_logs_wanted

console = Console(stderr=True)


def load_settings(**overrides: object) -> Settings:
    """The settings from the environment, with the command line's non-None overrides."""
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"RETRAIN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigurationError(redact.redact(f"invalid configuration: {problems}")) from None
    redact.register(*settings.api_keys, settings.github_webhook_secret,
                    settings.gitlab_webhook_token, settings.s3_webhook_token, settings.kube_token,
                    settings.git_token)
    return settings


# libraries whose INFO lines are about our own plumbing (every internal POST /events, ...)
THIRD_PARTY = ("httpx", "httpcore", "urllib3", "kubernetes", "asyncio", "absl", "tensorflow",
               "h5py", "grpc", "multipart", "PIL")


def setup_logging(verbose: bool, *, native: bool = False, live: Console | None = None) -> None:
    """Log at INFO (``verbose``) or WARNING, DEBUG with ``RETRAIN_LOG_LEVEL=debug``; other
    libraries' lines only at that level or from WARNING up. ``native``: the user asked for
    ``--verbose``, which also lets TensorFlow's native start-up lines through. ``live``: the
    console that draws live progress; log lines are printed through it, so the two never
    tear each other apart."""
    if native:
        os.environ["RETRAIN_LOG_LEVEL"] = "debug"
    debug = native_logs_wanted()
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    if live is not None:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=live, show_path=False,
                                               log_time_format="%H:%M:%S")
        logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    redact.install()


def run_parameters(models: str | None, epochs: int | None, steps: int | None,
                   batch: int | None, lr: float | None, policy: str | None,
                   workers: int | None = None, warm_start: bool | None = None,
                   train_cache: str | None = None, force: bool | None = None,
                   validation: str | None = None) -> Any:
    """``RunParameters`` from the command line's options (unset ones keep their defaults)."""
    from core.cache_policy import TRAINING, Policy
    from events.payloads import RunParameters

    for text, kinds in ((policy, None), (train_cache, TRAINING)):
        if text is not None:  # the cache's own message: what it expects, not a regex
            Policy.parse(text, *([kinds] if kinds else []))
    fields: dict[str, object] = {}
    if models is not None:
        fields["models"] = () if models.strip() == "none" else tuple(
            m.strip() for m in models.split(",") if m.strip())
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps), ("batch_size", batch),
                        ("learning_rate", lr), ("cache_policy", policy), ("workers", workers),
                        ("warm_start", warm_start), ("train_cache", train_cache),
                        ("force", force), ("validation", validation)):
        if value is not None:
            fields[name] = value
    try:
        return RunParameters(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError("invalid run parameters: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
