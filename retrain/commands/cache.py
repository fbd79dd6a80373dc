"""``retrain cache``: list, explain and collect the content-based step cache."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from retrain.commands.support import load_settings

cache_app = typer.Typer(no_args_is_help=True, help="The content-based step cache (Redis).")


@cache_app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every live entry: key, digest, records, age, hits, and when it expires unless hit."""
    from core.redis_store import open_redis
    from dataset.cache import ContentCache, ago

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        cache = ContentCache(handle.client, settings.cache_ttl_seconds)
        rows = [{**asdict(e), "expires_in": cache.expires_in(e.key)} for e in cache.entries()]
    if as_json:
        print(json.dumps(rows))
        return
    now = time.time()
    table = Table(title=f"cache entries ({len(rows)}) in {settings.store_dir / 'datasets'}")
    for col in ("key", "digest", "train+test", "age", "hit", "hits", "ttl"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        records = f"{row['records'].get('train', 0)}+{row['records'].get('test', 0)}"
        table.add_row(row["key"][:10], row["digest"][:10], records,
                      ago(now - row["created_at"], short=True),
                      ago(now - row["last_hit"], short=True) if row["hits"] else "-",
                      str(row["hits"]),
                      ago(row["expires_in"], short=True) if row["expires_in"] >= 0 else "gone")
    Console().print(table)


@cache_app.command("explain")
def explain(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    cache_policy: Annotated[str, typer.Option(help="exact, max-age=15m, min-change=0.1")] = "exact",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The key's parts and whether a run would hit, without running or changing anything."""
    from retrain.commands.step import decide_from_cli

    settings = load_settings()
    fp, check = decide_from_cli(settings, data, cache_policy, record=False)
    entry = check.decision.entry
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


@cache_app.command("gc")
def gc(
    grace: Annotated[float, typer.Option(help="keep anything touched within this many seconds")] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would go")] = False,
    as_json: Annotated[Optional[bool], typer.Option("--json")] = False,
) -> None:
    """Remove ingested datasets and shards no live cache entry needs (entries expire by
    themselves; this frees the disk they pointed at)."""
    from core.errors import ConfigurationError
    from core.redis_store import open_redis
    from dataset.cache import ContentCache
    from dataset.gc import collect_garbage

    if grace < 0:
        raise ConfigurationError(f"--grace {grace}: must be zero or more seconds")
    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        report, dropped = collect_garbage(
            ContentCache(handle.client, settings.cache_ttl_seconds), settings.store_dir,
            grace, dry_run)
    if as_json:
        print(json.dumps({**asdict(report), "dropped_entries": dropped}))
        return
    verb = "would remove" if dry_run else "removed"
    Console(soft_wrap=True).print(
        f"{verb} {len(report.removed_datasets)} dataset(s), {len(report.removed_units)} shard "
        f"unit(s), {len(report.removed_temporaries)} temporary folder(s) "
        f"({report.freed_bytes / 1e6:.1f} MB); {'would drop' if dry_run else 'dropped'} {len(dropped)} cache "
        f"entr{'y' if len(dropped) == 1 else 'ies'} whose dataset is gone; kept {report.kept_datasets} dataset(s), {report.kept_units} unit(s)",
        highlight=False)
