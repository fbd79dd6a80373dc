"""``retrain cache``: list, explain and collect the content-based step cache."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table

from core.settings import MODEL_TYPES
from retrain.commands.support import load_settings, run_parameters

cache_app = typer.Typer(no_args_is_help=True, help="The content-based step cache (Redis).")


Kind = Literal["ingestion", "training"]
KindOption = Annotated[Optional[Kind], typer.Option(help="one cache only (default: both)")]
CHAMPION = "a champion's dataset"  # why gc keeps a dataset (the pinned set says its own)
BLOCKED = "a blocked run's dataset"  # awaiting an approval, which trains on it
APPROVED = "an approved dataset"  # later validations count its images as known
NAMED = {CHAMPION: "champion dataset(s)", BLOCKED: "dataset(s) of blocked runs awaiting approval",
         APPROVED: "approved dataset(s)"}


def _caches(client: Any, settings: Any, kind: str | None) -> dict[str, Any]:
    from dataset.cache import ingestion_cache
    from services.trainer.training_cache import training_cache

    found = {"ingestion": ingestion_cache(client, settings.cache_ttl_seconds),
             "training": training_cache(client, settings.cache_ttl_seconds)}
    return {name: cache for name, cache in found.items() if kind in (None, name)}


@cache_app.command("ls")
def ls(kind: KindOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every live entry: key, digest, records or model, age, hits, and when it expires unless
    hit. With --json: {"ingestion": [...], "training": [...]}."""
    from core.redis_store import open_redis

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        found = {name: [{**asdict(e), "expires_in": cache.expires_in(e.key)}
                        for e in cache.entries()]
                 for name, cache in _caches(handle.client, settings, kind).items()}
    if as_json:  # one kind asked for: its list; else both, by kind
        print(json.dumps(found[kind] if kind else found))
        return
    if "ingestion" in found:
        _ingestions(found["ingestion"], settings)
    if "training" in found:
        _trainings(found["training"], settings)


def _expiry(row: dict[str, Any], now: float) -> tuple[str, str, str]:
    from core.durations import ago

    return (ago(now - row["created_at"], short=True),
            ago(now - row["last_hit"], short=True) if row["hits"] else "-",
            ago(row["expires_in"], short=True) if row["expires_in"] >= 0 else "gone")


def _trainings(rows: list[dict[str, Any]], settings: Any) -> None:
    now = time.time()
    table = Table(title=f"training cache entries ({len(rows)}) in {settings.runs_dir}")
    for col in ("key", "model", "digest", "val acc", "steps", "age", "hits", "ttl", "trained by"):
        table.add_column(col, no_wrap=col != "trained by")
    for row in rows:
        age, _hit, ttl = _expiry(row, now)
        table.add_row(row["key"][:8], row["model_type"], row["dataset_digest"][:8],
                      f"{row['val_accuracy']:.4f}", str(row["steps"]), age, str(row["hits"]),
                      ttl, row["run_id"])
    Console().print(table)


def _ingestions(rows: list[dict[str, Any]], settings: Any) -> None:
    now = time.time()
    table = Table(title=f"ingestion cache entries ({len(rows)}) in {settings.store_dir / 'datasets'}")
    for col in ("key", "digest", "train+test", "age", "hit", "hits", "ttl"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        records = f"{row['records'].get('train', 0)}+{row['records'].get('test', 0)}"
        age, hit, ttl = _expiry(row, now)
        table.add_row(row["key"][:10], row["digest"][:10], records, age, hit, str(row["hits"]), ttl)
    Console().print(table)


@cache_app.command("explain")
def explain(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    cache_policy: Annotated[str, typer.Option(help="exact, max-age=15m, min-change=0.1")] = "exact",
    kind: Annotated[Kind, typer.Option(help="which cache's decision")] = "ingestion",
    models: Annotated[Optional[str], typer.Option(help=f"training: {','.join(MODEL_TYPES)}")] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    workers: Optional[int] = None,
    train_cache: Annotated[Optional[str], typer.Option(help="training: exact, max-age=2h or off")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The key's parts and whether a run would hit, without running or changing anything.
    --kind training: for each variant a run with these parameters would train."""
    from retrain.commands.step import decide_from_cli

    settings = load_settings()
    fp, check = decide_from_cli(settings, data, cache_policy, record=False)
    entry = check.decision.entry
    if kind == "training":
        params = run_parameters(models, epochs, steps_per_epoch, batch_size, learning_rate,
                                None, workers, None, train_cache)
        _explain_training(settings, data, params, entry.dataset_uri if entry else None, as_json)
        return
    info = {"key": check.key, "parts": check.parts, "policy": check.policy,
            "would_hit": check.decision.hit, "reason": check.decision.reason,
            "dataset_uri": entry.dataset_uri if entry else None,
            "files": len(fp.files), "bytes": fp.total_bytes}
    if as_json:
        print(json.dumps(info))
        return
    out = Console(soft_wrap=True)
    out.print(f"key          {check.key}")
    out.print(f"  digest     {fp.digest}  ({len(fp.files)} files, {fp.total_bytes:,} bytes)")
    out.print(f"  code       {check.parts['code_version']}")
    out.print(f"  params     {json.dumps(check.parts['params'], sort_keys=True)}")
    out.print(f"policy       {check.policy}")
    verdict = "[green]would hit[/]" if check.decision.hit else "[yellow]would miss[/]"
    out.print(f"{verdict}    {check.decision.reason}", highlight=False)
    if entry:
        out.print(f"dataset      {entry.dataset_uri}")


def _explain_training(settings: Any, data: str, params: Any, dataset_uri: str | None,
                      as_json: bool) -> None:
    from core.cache_policy import TRAINING, Policy
    from core.redis_store import open_redis
    from services.trainer.training_cache import training_cache
    from workflows.fanout import Trainings
    from workflows.training import Memo

    out = Console(soft_wrap=True)
    if dataset_uri is None:
        reason = "the dataset is not ingested yet: every training would run"
        if as_json:
            print(json.dumps({"would_hit": False, "reason": reason, "trainings": []}))
        else:
            out.print(f"[yellow]would miss[/]    {reason}", highlight=False)
        return
    with open_redis(settings.redis_url, settings.home) as handle:
        memo = Memo(training_cache(handle.client, settings.cache_ttl_seconds),
                    Policy.parse(params.train_cache, TRAINING))
        checks = [memo.explain(Trainings.options("explain", params, model, dataset_uri, Path("-")))
                  for model in params.models]
    rows = [{"model": c.model, "key": c.key, "parts": c.parts, "policy": c.policy,
             "would_hit": c.decision.hit, "reason": c.decision.reason,
             "model_uri": c.decision.entry.model_uri if c.decision.entry else None}
            for c in checks]
    if as_json:
        print(json.dumps({"dataset_uri": dataset_uri, "trainings": rows}))
        return
    out.print(f"dataset      {dataset_uri}")
    for row in rows:
        out.print(f"{row['model']:<12} key {row['key']}")
        out.print(f"  parts      {json.dumps(row['parts'], sort_keys=True)}", highlight=False)
        verdict = "[green]would hit[/]" if row["would_hit"] else "[yellow]would miss[/]"
        out.print(f"  {verdict}  {row['reason']}", highlight=False)
        if row["model_uri"]:
            out.print(f"  model      {row['model_uri']}")


@cache_app.command("gc")
def gc(
    grace: Annotated[float, typer.Option(help="keep anything touched within this many seconds")] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would go")] = False,
    kind: KindOption = None,
    as_json: Annotated[Optional[bool], typer.Option("--json")] = False,
) -> None:
    """Free the disk entries pointed at (entries expire by themselves): ingested datasets and
    shards no live ingestion entry needs, never the pinned evaluation set or a champion's
    dataset (current or past); trained models no live training entry needs, never the
    champion's or one in its history (rollback needs them)."""
    from core.errors import ConfigurationError
    from core.redis_store import open_redis
    from dataset.gc import collect_garbage

    if grace < 0:
        raise ConfigurationError(f"--grace {grace}: must be zero or more seconds")
    settings = load_settings()
    found: dict[str, Any] = {}
    with open_redis(settings.redis_url, settings.home) as handle:
        caches = _caches(handle.client, settings, kind)
        if "ingestion" in caches:
            report, dropped = collect_garbage(caches["ingestion"], settings.store_dir, grace,
                                              dry_run, _champion_datasets(handle.client, settings))
            found["ingestion"] = {**asdict(report), "dropped_entries": dropped}
        if "training" in caches:
            from workflows.training import collect_models

            found["training"] = asdict(collect_models(
                caches["training"], settings.runs_dir, _protected(handle.client, settings),
                grace, dry_run))
    if as_json:
        print(json.dumps(found[kind] if kind else found))
        return
    would = "would " if dry_run else ""
    out = Console(soft_wrap=True)
    if "ingestion" in found:
        r = found["ingestion"]
        out.print(
            f"ingestion: {would}{'remove' if dry_run else 'removed'} {len(r['removed_datasets'])} "
            f"dataset(s), {len(r['removed_units'])} shard unit(s), "
            f"{len(r['removed_temporaries'])} temporary folder(s) ({r['freed_bytes'] / 1e6:.1f} MB); "
            f"{would}{'drop' if dry_run else 'dropped'} {_entries(r['dropped_entries'])} whose "
            f"dataset is gone; kept {r['kept_datasets']} dataset(s), {r['kept_units']} unit(s)"
            f"{_never(r['protected_datasets'])}", highlight=False)
    if "training" in found:
        t = found["training"]
        out.print(
            f"training: {would}{'remove' if dry_run else 'removed'} {len(t['removed_models'])} "
            f"model(s) ({t['freed_bytes'] / 1e6:.1f} MB); {would}{'drop' if dry_run else 'dropped'} "
            f"{_entries(t['dropped_entries'])} whose model is gone or altered; kept "
            f"{t['kept_models']} model(s)", highlight=False)


def _entries(keys: list[str]) -> str:
    return f"{len(keys)} entr{'y' if len(keys) == 1 else 'ies'}"


def _never(protected: dict[str, str]) -> str:
    """What gc never collects, as its report says it."""
    if not protected:
        return ""
    pinned = [Path(uri).name[:12] for uri, why in protected.items()
              if why not in (CHAMPION, BLOCKED, APPROVED)]
    counts = {why: sum(w == why for w in protected.values()) for why in (CHAMPION, BLOCKED, APPROVED)}
    parts = ([f"the pinned evaluation set {pinned[0]}"] if pinned else []) + [
        f"{n} {NAMED[why]}" for why, n in counts.items() if n]
    return f" (never collected: {' and '.join(parts)})"


def _champion_datasets(client: Any, settings: Any) -> dict[str, str]:
    """The datasets of the champion and its history (the gate and the lineage refer to them),
    of runs blocked and awaiting an approval (which trains on that very dataset), and of data
    approved since (later validations count it as known)."""
    import time

    from services.selector.champion import ChampionStore
    from workflows import record, validate

    store = ChampionStore(client, str(settings.model_repo.resolve()))
    kept = {uri: APPROVED for uri in validate.approved_datasets(client)}
    kept.update({run["dataset_uri"]: BLOCKED
                 for run in record.runs_since(client, time.time() - record.KEPT)
                 if run.get("status") == "blocked" and run.get("dataset_uri")})
    kept.update({c.dataset_uri: CHAMPION for c in (store.get(), *store.history()) if c is not None})
    return kept


def _protected(client: Any, settings: Any) -> set[str]:
    """The champion's and its history's models, where they are served from and where they
    were trained."""
    from services.selector.champion import ChampionStore

    store = ChampionStore(client, str(settings.model_repo.resolve()))
    champions = [c for c in (store.get(), *store.history()) if c is not None]
    return ({c.model_uri for c in champions}
            | {str(settings.runs_dir / c.run_id / c.model_type / "model") for c in champions})
