"""The recipe's Prodigy layer, against the STAND-IN ``prodigy`` package in tests/prodigy_standin (Prodigy is
commercial and cannot be installed here; the stand-in models only the registration API the recipe uses)."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from odal.daemon.sources import datasets
from odal.daemon.commands.demo import write_workspace
from odal.common.errors import ConfigError
from odal.serving.process import free_port

RECIPE_FILE = Path(__file__).resolve().parents[1] / "recipe" / "odal_recipe.py"
STANDIN = Path(__file__).resolve().parent / "prodigy_standin"
OPTIONS = ("--label", "--server", "--model", "--threshold", "--order", "--batch-size", "--workspace", "--data-dir",
           "--wait")


@pytest.fixture
def standin(monkeypatch):
    """Put the stand-in ``prodigy`` on sys.path for this test only, and forget it afterwards."""
    for name in [n for n in sys.modules if n == "prodigy" or n.startswith("prodigy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STANDIN))
    yield monkeypatch
    for name in [n for n in sys.modules if n == "prodigy" or n.startswith("prodigy.")]:
        del sys.modules[name]


def _load_recipe_file(name: str):
    """Load recipe/odal_recipe.py by path, as ``prodigy ... -F recipe/odal_recipe.py`` does."""
    spec = importlib.util.spec_from_file_location(name, RECIPE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipe_module_imports_and_registers_nothing_without_prodigy():
    code = ("import sys; sys.modules['prodigy'] = None\n"  # make `import prodigy` fail even if one were installed
            "import odal.recipe.odal_recipe as r; print(r.PRODIGY_API)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_current_api_registers_odal_correct_with_arg_help_for_every_parameter(standin):
    module = _load_recipe_file("odal_recipe_core")
    import prodigy

    assert module.PRODIGY_API == "core"
    entry = prodigy.RECIPES["odal.correct"]
    params = list(inspect.signature(entry["func"]).parameters)
    assert entry["api"] == "core" and set(entry["args"]) == set(params)
    assert all(arg.help for arg in entry["args"].values())
    assert entry["args"]["dataset"].names == () and entry["args"]["label"].names == ("--label", "-l")
    assert inspect.signature(entry["func"]).parameters["label"].annotation is not inspect.Parameter.empty
    text = prodigy.cli_help("odal.correct")
    assert all(option in text for option in OPTIONS), text


def test_old_api_fallback_registers_with_tuple_annotations(standin):
    standin.setitem(sys.modules, "prodigy.core", None)  # an older Prodigy: no prodigy.core
    module = _load_recipe_file("odal_recipe_legacy")
    import prodigy

    assert module.PRODIGY_API == "legacy"
    entry = prodigy.RECIPES["odal.correct"]
    assert entry["api"] == "legacy"
    assert entry["args"]["dataset"][1] == "positional" and entry["args"]["label"][1:3] == ("option", "l")
    assert entry["args"]["label"][3]("square, disc") == ["square", "disc"]
    assert entry["args"]["threshold"][3] is float and all(meta[0] for meta in entry["args"].values())
    text = prodigy.cli_help("odal.correct")
    assert all(option in text for option in OPTIONS), text


def _workspace(root: Path, labels: list[str]) -> tuple[Path, list]:
    """A workspace whose label map is ``labels`` and whose data dir holds 3 generated images; nothing serves."""
    items = datasets.generate_shapes(root / "data", 3, seed=1)
    write_workspace(root / "ws", root / "data", labels, 10, 2, serving_address=f"127.0.0.1:{free_port()}")
    return root / "ws", items


def test_registered_recipe_returns_prodigy_components_and_hashes_with_prodigy(standin, tmp_path):
    _load_recipe_file("odal_recipe_run")
    import prodigy
    from prodigy.util import set_hashes

    ws, items = _workspace(tmp_path, ["square", "disc"])  # nothing listens: tasks still flow, without suggestions
    components = prodigy.run("odal.correct", ["shapes", str(tmp_path / "data"), "--workspace", str(ws),
                                              "--order", "file", "--wait", "5"])
    try:
        tasks = list(components["stream"])
    finally:
        components["on_exit"](None)
    assert components["view_id"] == "image_manual" and components["dataset"] == "shapes"
    assert components["config"]["labels"] == ["square", "disc"] and "update" not in components
    assert [t["path"] for t in tasks] == [item.image.name for item in items]
    expected = set_hashes({"image": tasks[0]["image"], "spans": []}, overwrite=True)
    assert tasks[0]["_input_hash"] == expected["_input_hash"]  # prodigy.util.set_hashes made the hashes
    assert components["before_db"](tasks)[0]["image"] == items[0].image.name


@pytest.mark.parametrize("api", ["core", "legacy"])
def test_label_is_optional_and_checked_against_the_label_map_from_the_command_line(standin, tmp_path, api):
    if api == "legacy":
        standin.setitem(sys.modules, "prodigy.core", None)  # an older Prodigy: plac passes None for --label
    module = _load_recipe_file(f"odal_recipe_label_{api}")
    import prodigy

    assert module.PRODIGY_API == api
    ws, _items = _workspace(tmp_path, ["disc", "square"])
    source = str(tmp_path / "data")
    standin.setenv("ODAL_CONFIG", str(ws / "odal.toml"))  # no --workspace: the service's variable, as the CLI
    components = prodigy.run("odal.correct", ["shapes", source])
    components["on_exit"](None)
    assert components["config"]["labels"] == ["disc", "square"]  # every label, in the label map's order
    components = prodigy.run("odal.correct", ["shapes", source, "-w", str(ws), "--label", "square, disc"])
    components["on_exit"](None)
    assert components["config"]["labels"] == ["disc", "square"]
    with pytest.raises(ConfigError, match=r"--label circle: not in the label map .*label_map\.pbtxt"):
        prodigy.run("odal.correct", ["shapes", source, "-w", str(ws), "--label", "disc,circle"])
