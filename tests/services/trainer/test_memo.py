"""The model digest the training cache and the selector rely on: remembered while a model's
files are untouched, never once one of them is rewritten (even to the same size and mtime)."""

import os
import time

from services.trainer import memo


def test_the_digest_is_remembered_only_while_no_file_is_rewritten(tmp_path, monkeypatch):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"weights-1")
    time.sleep(0.15)  # settled: older than the timestamps' tick
    first = memo.model_digest(model)
    hashed = []
    monkeypatch.setattr(memo, "blake3", lambda: hashed.append(1) or __import__("blake3").blake3())
    assert memo.model_digest(model) == first and hashed == []  # remembered, not read again
    index = model / "variables" / "variables.index"
    stat = index.stat()
    index.write_bytes(b"weights-2")  # same size
    os.utime(index, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the mtime put back
    time.sleep(0.15)
    assert memo.model_digest(model) != first and hashed == [1]  # the ctime moved: read again


def test_the_code_version_hashes_every_trainer_module_the_learning_imports():
    """A change to the validation split, the seed or the export's files must miss the
    training cache: whatever train.py and its helpers import from the trainer is hashed."""
    import ast
    from pathlib import Path

    from services.trainer import memo

    folder = Path(memo.__file__).parent
    imported = set()
    for name in memo._CODE_MODULES:
        for node in ast.walk(ast.parse((folder / name).read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("services.trainer"):
                if module == "services.trainer":
                    imported |= {f"{alias.name}.py" for alias in node.names}
                else:
                    imported.add(module.rsplit(".", 1)[1] + ".py")
    assert imported <= set(memo._CODE_MODULES), imported - set(memo._CODE_MODULES)
