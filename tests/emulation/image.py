"""What the image gives every container before the pod spec says anything: read from the
Dockerfile's final stage, as a container runtime applies it. Its ``ENV`` lines (``KEY=VALUE``
pairs, quoted or not, over ``\\``-continued lines, ``$VAR`` and ``${VAR}`` expanded from the
values set before the instruction, the base image's own from ``base``), its ``ENTRYPOINT`` and
``CMD`` (exec form), and the folders its ``RUN mkdir -p`` makes in the image's filesystem.

The kubelet puts a pod's ``env`` and ``envFrom`` over the image's environment: a variable the
image sets and the pod does not is still there (``RETRAIN_HOME`` in every one of our pods)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class DockerfileError(Exception):
    """A Dockerfile line the emulation cannot read as Docker would."""


@dataclass(frozen=True)
class Image:
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    folders: tuple[str, ...]  # made by the image (RUN mkdir -p), in its own filesystem


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        word, _, rest = whole.partition(" ")
        found.append((word.upper(), rest.strip()))
    return found


def expand(value: str, env: Mapping[str, str]) -> str:
    """Docker's ``$VAR`` / ``${VAR}`` substitution: an unset variable becomes empty."""
    return VARIABLE.sub(lambda m: env.get(m[1] or m[2], ""), value)


def env_pairs(arguments: str, env: Mapping[str, str]) -> dict[str, str]:
    """One ``ENV`` instruction's pairs, each value expanded with ``env`` (what was set before
    the instruction: Docker substitutes all of one instruction's values from before it)."""
    words = shlex.split(arguments, posix=True)
    if words and "=" not in words[0]:  # the legacy form: ENV KEY the rest of the line
        return {words[0]: expand(arguments.partition(" ")[2].strip(), env)}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"ENV {arguments!r}: {word!r} is not KEY=VALUE")
        pairs[key] = expand(value, env)
    return pairs


def read(dockerfile: Path, base: Mapping[str, str] | None = None) -> Image:
    """The final stage of ``dockerfile``; ``base``: the base image's own environment."""
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions(dockerfile.read_text()):
        if word == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append((word, rest))
    if not stages:
        raise DockerfileError(f"{dockerfile}: no FROM")
    env, entrypoint, cmd, folders = dict(base or {}), [], [], []
    set_here: set[str] = set()
    for word, rest in stages[-1]:
        if word == "ENV":
            pairs = env_pairs(rest, env)
            env.update(pairs)
            set_here.update(pairs)
        elif word in ("ENTRYPOINT", "CMD"):
            value = json.loads(rest)
            entrypoint, cmd = (value, cmd) if word == "ENTRYPOINT" else (entrypoint, value)
        elif word == "RUN":
            for made in re.finditer(r"mkdir\s+-p\s+((?:[^\s&;|]+\s*)+)", rest):
                folders.extend(p for p in made[1].split() if p.startswith("/"))
    return Image({k: env[k] for k in sorted(set_here)}, entrypoint, cmd, tuple(folders))
