"""Errors of the dataset domain: finding, validating, ingesting and caching a dataset."""

from __future__ import annotations

from core.errors import RetrainError


class DatasetError(RetrainError):
    """Base of every dataset failure."""


class DatasetValidationError(DatasetError):
    """The dataset cannot be ingested; ``problems`` names every file and reason found."""

    def __init__(self, problems: list[str]) -> None:
        joined = "\n  - ".join(problems)
        super().__init__(f"dataset is invalid ({len(problems)} problem(s)):\n  - {joined}")
        self.problems = tuple(problems)


class DamagedShardError(DatasetError):
    """A shard whose bytes are not the records written (a length or a record that does not
    match its CRC: the disk's damage, or a write cut short)."""

    def __init__(self, path: str, record: int) -> None:
        super().__init__(f"shard {path} is damaged at record {record} (its CRC does not "
                         "match): ingest the dataset again")
        self.path = path
        self.record = record


class DatasetNotFoundError(DatasetError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"dataset not found: {uri} (no such folder)")
        self.uri = uri


class UnsupportedSourceError(DatasetError):
    """A data URI whose scheme this process cannot read from directly."""

    def __init__(self, uri: str, scheme: str) -> None:
        super().__init__(f"data URI {uri!r}: scheme {scheme}:// is not supported by the local "
                         "runner yet (use a folder path or file://)")
        self.uri = uri
        self.scheme = scheme


class CacheError(DatasetError):
    """The content cache refused an operation (a lost lease, a wait that timed out)."""
