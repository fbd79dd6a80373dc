"""The training cache's code version: every module the learning's result depends on."""


def test_the_code_version_hashes_every_trainer_module_the_learning_imports():
    """A change to the validation split, the seed or the export's files must miss the
    training cache: whatever train.py and its helpers import from the trainer is hashed."""
    import ast
    from pathlib import Path

    from services.trainer import training_cache

    folder = Path(training_cache.__file__).parent
    imported = set()
    for name in training_cache._CODE_MODULES:
        for node in ast.walk(ast.parse((folder / name).read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("services.trainer"):
                if module == "services.trainer":
                    imported |= {f"{alias.name}.py" for alias in node.names}
                else:
                    imported.add(module.rsplit(".", 1)[1] + ".py")
    hashed = set(training_cache._CODE_MODULES)
    assert imported <= hashed, imported - hashed
