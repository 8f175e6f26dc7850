"""maavt_fast: a fast, tested MA-AVT (audio-visual parameter-efficient transformer) with fused Triton ops.

The model is `maavt_fast.model.MAAVT`, the configuration `maavt_fast.config`, the drop-in ops
`maavt_fast.ops`, the data pipeline `maavt_fast.data`, the trainer `maavt_fast.train`, the CLI `maavt`.
"""
__version__ = "0.1.0"


def _checkout_kernels() -> None:
    """Make `maavt_fast.kernels` importable from a plain checkout (PYTHONPATH=., not pip-installed).

    Installed, the kernels are a real subpackage (or the editable install's finder maps them); in a
    checkout they live in `<root>/kernels/`, which nothing else maps to `maavt_fast.kernels`. A finder at
    the end of `sys.meta_path` maps that one name there, so installed copies still win and importing
    `maavt_fast` imports nothing more (triton only loads with the kernels).
    """
    import os
    import sys
    from importlib.util import spec_from_file_location

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(os.path.dirname(here), "kernels")
    init = os.path.join(path, "__init__.py")
    pyproject = os.path.join(os.path.dirname(here), "pyproject.toml")
    if os.path.isdir(os.path.join(here, "kernels")) or not os.path.isfile(init) or not os.path.isfile(pyproject):
        return
    with open(pyproject, encoding="utf-8") as f:
        if 'name = "maavt_fast"' not in f.read():  # a kernels/ beside an install in site-packages is not ours
            return
    name = __name__ + ".kernels"

    class CheckoutKernelsFinder:
        @staticmethod
        def find_spec(fullname, target_path=None, target=None):
            if fullname != name:
                return None
            return spec_from_file_location(name, init, submodule_search_locations=[path])

    if not any(getattr(f, "__name__", None) == "CheckoutKernelsFinder" for f in sys.meta_path):  # reloads
        sys.meta_path.append(CheckoutKernelsFinder)


_checkout_kernels()
del _checkout_kernels
