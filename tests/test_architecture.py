"""The house stays one whose floors only point down: read from every import in the code."""

from pathlib import Path

import pytest

from tests.architecture import (
    FLOORS, circles, import_time_calls, imports, key_spellings, long_functions, modules, sideways,
    upward)

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
MAX_FUNCTION_LINES = 80


def test_no_package_imports_a_higher_floor():
    assert upward(imports(ROOT)) == []


def test_there_is_no_import_circle_anywhere():
    assert circles(imports(ROOT)) == []


def test_the_ground_floor_imports_nothing_of_ours():
    assert [i for i in imports(ROOT) if i.module.startswith("core") and
            not i.target.startswith("core")] == []


def test_nothing_imports_the_command_line():
    assert [i for i in imports(ROOT) if i.target.startswith("retrain")
            and not i.module.startswith("retrain")] == []


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules(ROOT).items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_service_imports_another():
    """What two services share (the model repository, a record's reads) lives below them."""
    assert sideways(imports(ROOT)) == []


def test_each_redis_key_is_spelled_by_its_owner_alone():
    """A record's key appears in one module, which writes it and offers the reads others need."""
    assert key_spellings(ROOT) == {}


def test_no_function_is_over_80_lines():
    assert long_functions(ROOT, MAX_FUNCTION_LINES) == {}


def test_importing_a_module_runs_nothing():
    """No configuration, subprocess or I/O at import: entry points configure what they need."""
    assert import_time_calls(ROOT) == []


# the checker itself, on a small tree written here: it must catch what it is for -------------
def _tree(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for floor in FLOORS:
        (tmp_path / floor).mkdir(exist_ok=True)
        (tmp_path / floor / "__init__.py").touch()
    return tmp_path


def test_the_checker_finds_an_upward_import_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "core/settings.py": "def load():\n    from services.trainer import main\n",
        "services/trainer/__init__.py": "",
        "services/trainer/main.py": "from core import settings\n",
    })
    found = upward(imports(root))
    assert found == [("core.settings:2 imports services.trainer.main "
                      "(core may not import services)")]


def test_the_checker_finds_a_circle_inside_one_folder(tmp_path):
    root = _tree(tmp_path, {
        "retrain/a.py": "from retrain import b\n",
        "retrain/b.py": "from . import c\n",
        "retrain/c.py": "import retrain.a\n",
        "retrain/d.py": "from retrain.a import thing\n",
    })
    assert upward(imports(root)) == []
    assert circles(imports(root)) == [["retrain.a", "retrain.b", "retrain.c"]]


@pytest.mark.parametrize("floor", FLOORS)
def test_every_floor_is_a_package_here(floor):
    assert (ROOT / floor / "__init__.py").is_file()


def test_the_checker_finds_a_service_importing_another_even_lazily(tmp_path):
    root = _tree(tmp_path, {
        "services/a/main.py": "def f():\n    from services.b import store\n",
        "services/a/other.py": "from services.a import main\n",
        "services/b/store.py": "from repository import layout\n",
        "repository/layout.py": "",
    })
    assert sideways(imports(root)) == ["services.a.main:2 imports services.b.store"]


def test_the_checker_finds_a_key_spelled_in_two_modules(tmp_path):
    root = _tree(tmp_path, {
        "core/a.py": "KEY = 'retrain:runs'\n",
        "events/b.py": "def f(i):\n    return f'retrain:runs:{i}', 'retrain:other'\n",
        "dataset/c.py": "X = 'retrain:other2'\n",
        "retrain/d.py": "def f():\n    \"\"\"Reads retrain:runs.\"\"\"\n",
    })
    assert key_spellings(root) == {"retrain:runs": ["core.a", "events.b"]}


def test_the_checker_finds_long_functions_and_calls_at_import(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    root = _tree(tmp_path, {
        "core/a.py": f"import os\n\ndef long():\n{body}\nos.environ.setdefault('A', '1')\n"
                     "if __name__ == '__main__':\n    long()\n",
        "retrain/cli.py": "app.command()(f)\n",
        "events/b.py": "import os\nclass C:\n    os.putenv('A', '1')\nfor i in (1,):\n    print(i)\n"
                       "LOG = __import__('logging').getLogger(__name__)\n",
    })
    assert long_functions(root, 80) == {"core.a:long": 81}
    assert import_time_calls(root) == ["core.a:85 os.environ.setdefault('A', '1')",
                                       "events.b:3 os.putenv('A', '1')", "events.b:5 print(i)"]
