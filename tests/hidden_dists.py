"""Simulate a smaller installation in a subprocess: hide every installed distribution outside a set.

`hiding_env(tmp, roots, always_hidden)` writes a `sitecustomize.py` into `tmp` and returns an environment
whose subprocesses see only `roots` and everything they require (recursively, following the extras a
requirement names). Hidden modules: find_spec -> None, import -> ModuleNotFoundError; hidden
distributions: not listed by importlib.metadata (so pytest loads no plugin of theirs). The editable
install of this checkout stays (`maavt_fast`, and `maavt_fast.kernels` from `kernels/`, come from it,
as after `pip install --no-deps -e .`); no PYTHONPATH points at the checkout.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import os
import re
from pathlib import Path

from packaging.requirements import Requirement

BLOCKER = '''\
"""Simulated installation (tests/hidden_dists.py): hide what it does not install."""
import re
import sys

HIDING_BLOCKER = True
HIDDEN_MODULES = {modules!r}
HIDDEN_DISTS = {dists!r}


def _hidden(name):
    return any(name == m or name.startswith(m + ".") for m in HIDDEN_MODULES)


class _Hide:
    """Wraps a meta path finder: hidden modules are not found, hidden distributions not listed."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        find = getattr(self._finder, "find_spec", None)
        return None if _hidden(name) or find is None else find(name, path, target)

    def find_distributions(self, *args, **kwargs):
        find = getattr(self._finder, "find_distributions", None)
        for dist in find(*args, **kwargs) if find is not None else ():
            if re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() not in HIDDEN_DISTS:
                yield dist

    def invalidate_caches(self):
        if hasattr(self._finder, "invalidate_caches"):
            self._finder.invalidate_caches()

    def __getattr__(self, attr):
        if attr == "_finder":
            raise AttributeError(attr)
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
sys.path_importer_cache.clear()
'''


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def allowed_dists(roots: tuple[str, ...]) -> frozenset[str]:
    """`roots` and everything they require here (base requirements, plus the extras a requirement names)."""
    seen: set[tuple[str, str]] = set()
    todo = [(norm(name), "") for name in roots]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(norm(req.name), e) for e in ("", *req.extras)]
    return frozenset(name for name, _ in seen)


@functools.cache
def hidden(roots: tuple[str, ...], always_hidden: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(modules, distributions) to hide: every installed distribution outside allowed_dists(roots), its
    modules (unless an allowed distribution provides them too) and `always_hidden`."""
    allowed = allowed_dists(roots)
    installed = {norm(d.metadata["Name"]) for d in md.distributions() if d.metadata["Name"]}
    dists = installed - allowed - {"maavt-fast"}  # this checkout, installed editable (as gpu_check.sh does)
    provided: dict[str, set[str]] = {}
    for module, owners in md.packages_distributions().items():
        for owner in owners:
            provided.setdefault(norm(owner), set()).add(module)
    keep = set().union(*(provided.get(d, set()) for d in allowed)) | {"maavt_fast"}
    modules = set(always_hidden).union(*(provided.get(d, set()) for d in dists)) - keep
    return tuple(sorted(modules)), tuple(sorted(dists))


def is_hidden(module: str, modules: tuple[str, ...]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in modules)


def hiding_env(tmp: Path, roots: tuple[str, ...], always_hidden: tuple[str, ...]) -> dict[str, str]:
    """Environment of a subprocess that sees only `roots` and their requirements (see the module docstring)."""
    modules, dists = hidden(roots, always_hidden)
    (tmp / "sitecustomize.py").write_text(BLOCKER.format(modules=modules, dists=dists))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=str(tmp), PYTHONNOUSERSITE="1")
    return env
