"""The house stays one whose floors only point down: read from every import in the code."""

from pathlib import Path

import pytest

from tests.architecture import FLOORS, circles, imports, modules, upward

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


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
