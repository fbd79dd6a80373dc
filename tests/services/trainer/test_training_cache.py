"""The training cache's code version: every module the learning's result depends on."""

import ast

from services.trainer import training_cache

# imported by the learning's modules, but nothing in them changes the weights or the files
NOT_THE_LEARNING = ("core.", "events.", "dataset.store", "dataset.errors")  # errors' words


def _ours(name: str) -> bool:
    return name.split(".")[0] in ("core", "events", "dataset", "repository", "services")


def test_the_code_version_hashes_every_module_the_learning_imports():
    """A change to the validation split, the seed, the records' parsing or the export's files
    must miss the training cache: whatever train.py imports, and what those import in turn,
    is hashed, wherever it lives (the record parser is in dataset/, the files' names in
    repository/)."""
    hashed = set(training_cache._CODE_MODULES)
    seen, todo = set(), ["services.trainer.train"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(training_cache.module_path(module).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module or not _ours(node.module):
                continue
            names = [f"{node.module}.{a.name}" for a in node.names]
            targets = [n for n in names if training_cache.module_path(n).is_file()] or [node.module]
            todo += [t for t in targets if not t.startswith(NOT_THE_LEARNING)]
    assert seen - hashed == set()
    assert {"dataset.example", "repository.layout", "services.trainer.data"} <= seen


def test_a_change_to_the_record_parser_changes_the_code_version(monkeypatch, tmp_path):
    real = training_cache.module_path

    def edited(name):
        if name != "dataset.example":
            return real(name)
        copy = tmp_path / "example.py"
        copy.write_text(real(name).read_text().replace("at, size = 12 +", "at, size = 13 +"))
        return copy

    before = training_cache.code_version()
    training_cache.code_version.cache_clear()
    monkeypatch.setattr(training_cache, "module_path", edited)
    try:
        assert training_cache.code_version() != before
    finally:
        training_cache.code_version.cache_clear()


def test_a_deterministic_training_or_another_seed_has_a_key_of_its_own(tmp_path):
    from services.trainer.options import TrainOptions

    meta = {"digest": "d", "code_version": "ingest-v1"}
    usual = TrainOptions(model="cnn", dataset="/store/datasets/k", out=tmp_path / "m")
    keys = {training_cache.training_key(training_cache.key_parts(o, meta, None)) for o in (
        usual, TrainOptions(**{**usual.__dict__, "deterministic": True}),
        TrainOptions(**{**usual.__dict__, "seed": 8}))}
    assert len(keys) == 3
