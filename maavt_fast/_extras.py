"""Optional dependencies, grouped into the pip extras of `pyproject.toml`.

The fused ops need only torch, triton and numpy. The other parts import their packages under
`with requires("EXTRA", __name__):`, which turns a missing one into a one-line error naming the extra:

    ModuleNotFoundError: maavt_fast.model.backbone needs timm, which is not installed: pip install 'maavt_fast[model]'

`require_found("EXTRA", __name__, modules)` raises the same error without importing anything, for a part that
must name its own extra before it imports another part (which would name that part's extra).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

# Extra -> the top-level modules its packages provide (what `import` names, not the distribution names).
EXTRA_MODULES = {
    "model": ("timm", "safetensors", "huggingface_hub"),
    "data": ("torchvision", "torchaudio", "soundfile", "av", "h5py", "PIL", "tqdm"),
    "tensorboard": ("tensorboard",),
    "dali": ("nvidia",),
    "xformers": ("xformers",),
}
EXTRA_MODULES["train"] = (*EXTRA_MODULES["model"], *EXTRA_MODULES["data"], "matplotlib", "yaml")


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""


@contextmanager
def requires(extra: str, part: str) -> Iterator[None]:
    """Re-raise a missing module of `extra` (imported inside the block by `part`) as a `MissingExtraError`."""
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r}; choose from {sorted(EXTRA_MODULES)}")
    try:
        yield
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if isinstance(err, MissingExtraError) or top not in EXTRA_MODULES[extra]:
            raise
        raise MissingExtraError(f"{part} needs {err.name}, which is not installed: "
                                f"pip install 'maavt_fast[{extra}]'", name=err.name) from None


def require_found(extra: str, part: str, modules: tuple[str, ...]) -> None:
    """Raise the `MissingExtraError` of `extra` for the first of `modules` not installed, without importing any."""
    with requires(extra, part):
        for name in modules:
            if importlib.util.find_spec(name) is None:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
