"""The locks (requirements/lock.txt, tests/comfyui/requirements.txt) pin everything, and nothing CUDA.

`make setup` installs with requirements/lock.txt as constraints, so the test venv must hold exactly
the locked versions; every third-party module the code imports must be declared in pyproject.
"""
from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = [ROOT / "requirements" / "lock.txt", ROOT / "tests" / "comfyui" / "requirements.txt"]
# CUDA runtimes, and torch add-ons whose PyPI wheels replace the CPU torch. nvidia-ml-py is the
# pure-Python NVML binding the server reads GPU facts with, not a CUDA package.
FORBIDDEN = re.compile(r"^(nvidia-(?!ml-py$)|triton|cuda-|torchvision|torchaudio)", re.I)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{lock.name}: not pinned with ==: {line!r}"
        pins[_canonical(name)] = version
    return pins


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in ("test", "lab", "ray"):
        requirements += project["optional-dependencies"][extra]
    return {_canonical(re.split(r"[<>=~!\[; ]", req, maxsplit=1)[0]) for req in requirements}


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_lock_pins_the_cpu_torch_and_no_cuda(lock):
    pins = _pins(lock)
    assert pins["torch"] == "2.13.0+cpu"
    assert not [name for name in pins if FORBIDDEN.match(name)]


def test_comfyui_lock_keeps_the_versions_that_worked():
    pins = _pins(LOCKS[1])
    assert {name: pins[name] for name in ("transformers", "numpy", "aiohttp", "av", "comfyui-frontend-package")} == {
        "transformers": "5.24.0", "numpy": "2.4.6", "aiohttp": "3.14.5", "av": "18.1.0",
        "comfyui-frontend-package": "1.32.9"}


def test_every_declared_requirement_is_locked():
    missing = _declared() - set(_pins(LOCKS[0])) - {"animenb"}
    assert not missing, f"in pyproject but not in requirements/lock.txt (run `make lock`): {sorted(missing)}"


def test_the_test_venv_holds_the_locked_versions():
    pins = _pins(LOCKS[0])
    lab_only = {"jupyterlab"}  # installed in .venv-lab, not here
    wrong = {}
    for dist in metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        if name in pins and dist.version != pins[name]:
            wrong[name] = (dist.version, pins[name])
    assert not wrong, f"installed != locked (re-run `make setup`): {wrong}"
    installed = {_canonical(d.metadata["Name"]) for d in metadata.distributions()}
    assert not lab_only & installed, "jupyterlab belongs in .venv-lab: it slows `import papermill` here"


def _imported_top_level(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_imported_package_is_declared():
    code = [*(ROOT / "animenb").rglob("*.py"), *(ROOT / "tests").glob("*.py")]
    modules = _imported_top_level(code) - set(sys.stdlib_module_names) - {"animenb", "__future__"}
    distributions = metadata.packages_distributions()
    local = {path.stem for path in (ROOT / "tests").glob("*.py")} | {"comfyui", "tests"}  # tests' own helpers
    undeclared = {}
    for module in sorted(modules - local):
        if module not in distributions:
            continue  # imported only where it is optional, not installed here
        names = {_canonical(dist) for dist in distributions[module]}
        if not names & _declared():
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported but not declared in pyproject: {undeclared}"
