"""Shared launcher helpers: launch counting and recording, tile configurations (autotuned or pinned),
dot precision per dtype, block sizes, interpreter check."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Callable, Iterator, Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Number of kernel launches per kernel name; tests assert on it to prove the kernel really ran.
LAUNCHES: collections.Counter[str] = collections.Counter()


@dataclasses.dataclass(frozen=True)
class Launch:
    """One recorded launch: what `launch` would have run."""
    name: str
    kernel: object
    args: tuple
    kwargs: dict


_recorder: list[Launch] | None = None


def launch(name: str, kernel, grid, *args, **kwargs) -> None:
    """Launch `kernel[grid](*args, **kwargs)` and count it under `name` (inside `recording()`: record it)."""
    if _recorder is not None:
        _recorder.append(Launch(name, kernel, args, kwargs))
        return
    kernel[grid](*args, **kwargs)
    LAUNCHES[name] += 1


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Inside, launches are appended to the yielded list instead of run (launchers may get "meta" tensors)."""
    global _recorder
    previous, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = previous


@triton.jit
def _probe():
    pass


# True when kernels here are defined under TRITON_INTERPRET=1: they then run on CPU tensors.
INTERPRETED: bool = isinstance(_probe, InterpretedFunction)


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Tile of a blocked kernel: `rows` x `cols` output tile, `features` per reduction chunk, warps, stages."""
    rows: int
    cols: int
    features: int
    warps: int
    stages: int

    def meta(self) -> dict[str, int]:
        """The kernels' tile constexprs."""
        return {"BR": self.rows, "BC": self.cols, "PC": self.features}

    def triton_config(self) -> triton.Config:
        return triton.Config(self.meta(), num_warps=self.warps, num_stages=self.stages)


def describe(config: TileConfig) -> str:
    """Short label of a configuration, e.g. '128x64x64 w8 s3' (rows x cols x features, warps, stages)."""
    return f"{config.rows}x{config.cols}x{config.features} w{config.warps} s{config.stages}"


_pinned: dict[str, TileConfig] = {}


@contextlib.contextmanager
def pinned(**configs: TileConfig) -> Iterator[None]:
    """Inside, the named kernels (e.g. contrastive_fwd=cfg) launch with these configs instead of autotuning."""
    previous = dict(_pinned)
    _pinned.update(configs)
    try:
        yield
    finally:
        _pinned.clear()
        _pinned.update(previous)


def _identity(config: triton.Config) -> tuple:
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages


def autotuned(kernel, configs: dict[int, Sequence[TileConfig | triton.Config]], key: list[str], element_arg: str):
    """`triton.autotune` of `kernel` over the configs for the element size of argument `element_arg`
    (pruned before timing). The interpreter cannot time kernels: there, launch a fixed config instead or pass
    one config per element size."""
    per_size = {size: [c.triton_config() if isinstance(c, TileConfig) else c for c in group]
                for size, group in configs.items()}
    every = list({_identity(c): c for group in per_size.values() for c in group}.values())
    allowed = {size: {_identity(c) for c in group} for size, group in per_size.items()}

    def for_dtype(candidates, named_args, **_):
        return [c for c in candidates if _identity(c) in allowed[named_args[element_arg].element_size()]]

    return triton.autotune(every, key=key, prune_configs_by={"early_config_prune": for_dtype})(kernel)


def launch_tiled(name: str, kernel, tuned, small: TileConfig, tiny: bool, grid: Callable[[dict], tuple[int, ...]],
                 *args, **kwargs) -> None:
    """Launch `kernel` with the pinned config of `name`, else `small` under the interpreter or when `tiny`,
    else the autotuned `tuned`. `grid(meta)` maps the tile constexprs to the grid."""
    config = _pinned.get(name) or (small if INTERPRETED or tiny else None)
    if config is None:
        launch(name, tuned, grid, *args, **kwargs)
    else:
        launch(name, kernel, grid(config.meta()), *args, **kwargs, **config.meta(), num_warps=config.warps,
               num_stages=config.stages)


def dot_precision(dtype: torch.dtype, fp32_precision: str) -> str:
    """`input_precision` of the kernels' dots: for fp32 inputs `fp32_precision` ("ieee": exact fp32 products,
    "tf32": tensor cores, 10-bit mantissas); fp16/bf16 dots run in their own dtype."""
    if dtype == torch.float32:
        return fp32_precision
    if dtype in (torch.float16, torch.bfloat16):
        return "ieee"  # unused by 16-bit operands
    raise TypeError(f"Triton kernels take float32, float16 or bfloat16 tensors; got {dtype}")


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation, in the narrower operand's dtype (an fp32 operand next to a
    bf16/fp16 one is cast to it, as flash-attention casts its probabilities); fp32 x fp32 at PRECISION.

    UPCAST (bf16 under the interpreter only, see `upcast_operands`) widens both operands to fp32 instead.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    if a.dtype == tl.float32:
        a = a.to(b.dtype)
    else:
        b = b.to(a.dtype)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def upcast_operands(dtype: torch.dtype) -> bool:
    """Whether dots must widen their operands to fp32 first: bf16 under the interpreter, whose bf16 dot
    multiplies bit patterns (widening bf16 to fp32 is exact, so the products stay those of the GPU)."""
    return INTERPRETED and dtype == torch.bfloat16


def block(n: int, minimum: int = 16, maximum: int | None = None) -> int:
    """Power-of-two tile side >= n (and >= `minimum`, the smallest `tl.dot` side), capped at `maximum`."""
    size = max(minimum, triton.next_power_of_2(n))
    return min(size, maximum) if maximum else size
