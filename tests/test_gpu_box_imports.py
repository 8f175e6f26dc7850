"""What benchmarks/gpu_check.sh runs on a lent GPU box imports nothing that box lacks.

The box has only torch, triton, timm (with torchvision, pillow, safetensors, huggingface_hub, pyyaml),
numpy, pytest and matplotlib, plus what those require; gpu_check.sh installs the checkout into it first
(`pip install --no-deps --no-build-isolation -e .`, no PYTHONPATH). Its time is scarce, so this simulates
it here (tests/hidden_dists.py): a `sitecustomize` hides every other installed distribution and keeps
this checkout's editable install. Under it, in subprocesses: the steps gpu_check.sh --dry-run lists
collect (pytest) and start (--help), every project module those steps import, even inside functions,
imports, and no function-level import of a hidden package waits on the GPU path.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hidden_dists import allowed_dists as _allowed
from hidden_dists import hidden as _hidden
from hidden_dists import hiding_env
from hidden_dists import is_hidden as _is_hidden
from hidden_dists import norm as _norm
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# What the box installs; everything these require (recursively, with extras) is there too.
ALLOWED_ROOTS = ("torch", "triton", "timm", "numpy", "pytest", "matplotlib", "pip", "setuptools", "wheel")
# Hidden whether or not they are installed here: what the project uses that the box lacks, and the usual
# extras (`nvidia` itself stays: torch's CUDA wheels live in that namespace on the box too).
ALWAYS_HIDDEN = ("av", "soundfile", "h5py", "nvidia.dali", "xformers", "tensorboard", "pandas", "torchaudio",
                 "hypothesis", "scipy")
# Known function-level imports of hidden packages reached from the GPU path, and why they never run there.
OPTIONAL_IMPORTS = {
    ("maavt_fast/model/blocks.py", "xformers"): "only under model.attention='xformers' (tests importorskip it; "
                                                "gpu_check.sh installs it first from XFORMERS_WHEEL)",
}


def allowed_dists() -> frozenset[str]:
    return _allowed(ALLOWED_ROOTS)


def hidden() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return _hidden(ALLOWED_ROOTS, ALWAYS_HIDDEN)


def is_hidden(module: str) -> bool:
    return _is_hidden(module, hidden()[0])


@pytest.fixture(scope="module")
def box_env(tmp_path_factory) -> dict[str, str]:
    """Environment of a subprocess that sees what the GPU box has, with this checkout installed (cwd=ROOT)."""
    return hiding_env(tmp_path_factory.mktemp("gpu_box"), ALLOWED_ROOTS, ALWAYS_HIDDEN)


def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@functools.cache
def gpu_check_steps() -> dict[str, list[str]]:
    """The steps `gpu_check.sh --dry-run` prints, name -> argv (without the interpreter)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "XFORMERS_WHEEL")}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    line = re.compile(r"^== \[(install|gpu-tests|ops|e2e|report)\] \(limit \d+s\) (.*)$", re.M)
    steps = {m[1]: shlex.split(m[2])[1:] for m in line.finditer(out)}
    assert steps.keys() == {"install", "gpu-tests", "ops", "e2e", "report"}, out
    return steps


def test_the_simulated_box_hides_what_it_lacks_and_imports_the_checkout(box_env):
    """Not vacuous: hidden packages installed here stop importing, allowed ones still import, and
    maavt_fast (with maavt_fast.kernels from kernels/) comes from this checkout's install, not PYTHONPATH."""
    assert str(ROOT) not in box_env["PYTHONPATH"].split(":")
    modules, dists = hidden()
    # the closure of what the box installs holds none of what the project needs beyond it
    lacking = {"av", "soundfile", "h5py", "torchaudio", "nvidia-dali-cuda130", "xformers", "hypothesis"}
    assert not lacking & allowed_dists()
    declared = [*md.requires("maavt_fast"),  # pyproject's dependencies and extras, as installed here
                *(line for line in (ROOT / "requirements-ci.txt").read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#"))]
    for req in map(Requirement, declared):
        name = _norm(req.name)
        if name not in allowed_dists() and name != "maavt-fast":  # the extras name the package itself
            try:
                md.distribution(name)
            except md.PackageNotFoundError:
                continue  # not installed here: missing in the subprocess as on the box
            assert name in dists, f"{name} is installed here, not on the box, and not hidden"
    here = [m for m in modules if _find_spec(m) is not None]  # installed here
    assert "av" in here, "PyAV (a base dependency) should be installed here: else `import av` proves nothing"
    code = f"""
import importlib.util, importlib.metadata as md, json, sys
out = {{"blocker": getattr(sys.modules.get("sitecustomize"), "HIDING_BLOCKER", False), "imported": []}}
for name in {here!r}:
    try:
        __import__(name)
        out["imported"].append(name)
    except ModuleNotFoundError:
        pass
    if "." not in name and importlib.util.find_spec(name) is not None:
        out["imported"].append(name + " (find_spec)")
import torch, triton, timm, torchvision, numpy, matplotlib, pytest, PIL, safetensors, yaml
import maavt_fast, maavt_fast.kernels
out["maavt_fast"] = [maavt_fast.__file__, maavt_fast.kernels.__file__]
out["maavt_fast_dist"] = any(d.metadata["Name"] == "maavt_fast" for d in md.distributions())
out["hypothesis_plugin"] = any(ep.name.startswith("hypothesis") for ep in md.entry_points(group="pytest11"))
print(json.dumps(out))
"""
    proc = run([sys.executable, "-c", code], box_env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["blocker"], "the sitecustomize blocker did not load"
    assert got["imported"] == [], f"hidden packages still import under the blocker: {got['imported']}"
    assert got["maavt_fast"] == [str(ROOT / "maavt_fast" / "__init__.py"), str(ROOT / "kernels" / "__init__.py")]
    assert got["maavt_fast_dist"] and not got["hypothesis_plugin"]  # installed (editable) as gpu_check.sh does
    proc = run([sys.executable, "-c", "import av"], box_env)
    assert proc.returncode != 0 and "ModuleNotFoundError: No module named 'av'" in proc.stderr


def test_gpu_check_installs_the_checkout_instead_of_pythonpath():
    """The box imports the package the way users do: the checkout installed (editable, else a copy)."""
    assert gpu_check_steps()["install"] == ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "--no-build-isolation ." in script  # the non-editable fallback
    assert not re.search(r"^\s*export PYTHONPATH=\.", script, re.M)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return None


def test_gpu_tests_collect_without_errors(box_env):
    argv = gpu_check_steps()["gpu-tests"]
    assert argv[:3] == ["-m", "pytest", "-m"] and any(a.startswith("tests/") for a in argv), argv
    proc = run([sys.executable, *argv, "--collect-only"], box_env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = re.search(r"^(\d+)(?:/\d+)? tests? collected", out, re.M)
    assert summary and int(summary[1]) > 0, out[-4000:]
    assert not re.search(r"\berrors?\b", out.splitlines()[-1]), out[-4000:]
    for path in (a for a in argv if a.startswith("tests/")):  # every module holds some of the GPU tests
        assert f"{path}::" in out, f"no gpu test collected from {path}"


@pytest.mark.parametrize("step", ["ops", "e2e", "report"])
def test_benchmark_scripts_start(box_env, step):
    flag, module = gpu_check_steps()[step][:2]
    assert flag == "-m" and re.fullmatch(r"benchmarks\.\w+", module), gpu_check_steps()[step]
    proc = run([sys.executable, "-m", module, "--help"], box_env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "usage:" in proc.stdout


def _project_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[:2] == ["maavt_fast", "kernels"]:
        base = ROOT.joinpath("kernels", *parts[2:])
    elif parts[0] in ("maavt_fast", "benchmarks"):
        base = ROOT.joinpath(*parts)
    elif module == "conftest":
        base = ROOT / "tests" / "conftest"
    else:
        return None
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _caught(handler: ast.ExceptHandler) -> set[str]:
    """Names of the exception classes an `except` clause catches (a bare one catches BaseException)."""
    if handler.type is None:
        return {"BaseException"}
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else "?" for t in types}


def _imports(path: Path, module: str):
    """(imported module, under a try that catches ImportError) for every import in the file, functions included;
    `load_kernels("x")` counts as importing maavt_fast.kernels.x."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node, guarded):
        if isinstance(node, ast.Try):
            catches = set().union(*map(_caught, node.handlers))
            inner = guarded or bool(catches & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
            for child in node.body:
                yield from visit(child, inner)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                yield from visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            yield from ((alias.name, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            yield base, guarded
            for alias in node.names:
                if _project_file(f"{base}.{alias.name}"):
                    yield f"{base}.{alias.name}", guarded
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_kernels" and node.args
              and isinstance(node.args[0], ast.Constant)):
            yield f"maavt_fast.kernels.{node.args[0].value}", guarded
        for child in ast.iter_child_nodes(node):
            yield from visit(child, guarded)

    yield from visit(ast.parse(path.read_text(), str(path)), False)


@functools.cache
def gpu_path_imports() -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """Project modules the gpu_check.sh steps can import (following imports inside functions too), and the
    (file, third-party module) pairs imported outside a try/except ImportError anywhere in them."""
    steps = gpu_check_steps()
    entries = [a for a in steps["gpu-tests"] if a.startswith("tests/")]
    entries += [steps[s][1].replace(".", "/") + ".py" for s in ("ops", "e2e", "report")]
    todo = [(ROOT / e, "conftest" if e.endswith("conftest.py") else ".".join(Path(e).with_suffix("").parts))
            for e in [*entries, "tests/conftest.py"]]
    project: set[str] = set()
    third: set[tuple[str, str]] = set()
    while todo:
        path, module = todo.pop()
        for name, guarded in _imports(path, module):
            found = _project_file(name)
            if found is not None:
                for i in range(1, name.count(".") + 2):  # its parent packages run first
                    parent = ".".join(name.split(".")[:i])
                    if parent not in project and (parent_file := _project_file(parent)) is not None:
                        project.add(parent)
                        todo.append((parent_file, parent))
            elif name.split(".")[0] not in sys.stdlib_module_names and not guarded and name != "conftest":
                third.add((str(path.relative_to(ROOT)), name))
    return frozenset(project), frozenset(third)


def test_every_module_the_gpu_steps_import_later_imports_on_the_box(box_env):
    """--help and collection run module tops only: the benchmarks and tests import more inside functions."""
    project, third = gpu_path_imports()
    assert {"maavt_fast.train.step", "maavt_fast.model", "maavt_fast.kernels.contrastive", "benchmarks.harness"} \
        <= project
    lazy = sorted((f, m) for f, m in third if is_hidden(m) and (f, m.split(".")[0]) not in OPTIONAL_IMPORTS)
    assert not lazy, f"imports of packages the GPU box lacks on its path (make them optional or guard them): {lazy}"
    modules = sorted(project - {"conftest"})
    code = f"import sys; sys.path.insert(0, 'tests'); import conftest\nfor m in {modules!r}: __import__(m)"
    proc = run([sys.executable, "-c", code], box_env)
    assert proc.returncode == 0, proc.stderr[-4000:]
