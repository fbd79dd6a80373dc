"""The model digest the training cache and the selector rely on: remembered while a model's
files are untouched, never once one of them is rewritten (even to the same size and mtime)."""

import os
import time

from repository import digest


def test_the_digest_is_remembered_only_while_no_file_is_rewritten(tmp_path, monkeypatch):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"weights-1")
    time.sleep(0.15)  # settled: older than the timestamps' tick
    first = digest.model_digest(model)
    hashed = []
    monkeypatch.setattr(digest, "blake3", lambda: hashed.append(1) or __import__("blake3").blake3())
    assert digest.model_digest(model) == first and hashed == []  # remembered, not read again
    index = model / "variables" / "variables.index"
    stat = index.stat()
    index.write_bytes(b"weights-2")  # same size
    os.utime(index, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the mtime put back
    time.sleep(0.15)
    assert digest.model_digest(model) != first and hashed == [1]  # the ctime moved: read again
