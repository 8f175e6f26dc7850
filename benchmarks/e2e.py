"""End-to-end benchmark: reference vs fast-eager vs fast-compiled MA-AVT, side by side in one run.

For every shape (ViT, batch) it measures, on the same weights and inputs, the training step
(forward, loss, backward, Adam; `maavt_fast.train.step.TrainStep`) and the inference forward:
median / p20 / p80 ms over repeats after warm-up, samples/s, peak memory, each row's ratio to
`reference`, and the roofline numbers (counted FLOPs per step / step time against a large GEMM of
the row's dtype measured in the same process; MFU against the published peak on known GPUs).
Rows are appended to `<out>/e2e.json` / `.csv` one at a time (`benchmarks/report.py` renders them).

Peak memory (`*_peak_mb`) is what one call adds above the resident model, inputs and optimizer
state: on CUDA `max_memory_allocated`; on CPU each row runs in a fresh process and reports the growth
of its peak RSS (VmHWM, after returning freed heap with `malloc_trim`); `process_peak_rss_mb` is the
whole process's peak (imports and compilation included).

`--accum` measures gradient accumulation instead: fast-eager training steps of the same global batch in
1, 2 and 4 micro-batches (`train.accum_steps`, `maavt_fast.train.accumulate`); the `accum_steps` column
says which, and the speedup / peak ratios are against the accum_steps=1 row of the shape. Its rows go to
`<out>/e2e.accum.json` / `.csv`.

`--interleaved` instead takes the training steps of a shape's rows in turns in one process, with a
GEMM of each dtype every round (`e2e.interleaved.json`): on a shared machine, the steadiest ratios.

    maavt bench e2e [--quick] [--device cpu|cuda] [--out DIR] [--profile DIR] [--interleaved]
                    [--models vit_small_patch16_224,...] [--batches 4,8] [--impls reference,fast-eager]
                    [--accum]
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import resource
import subprocess
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks import harness, profiling, roofline
from maavt_fast.config import ModelConfig, preset

ROOT = Path(__file__).resolve().parents[1]

IMPLS = ("reference", "fast-eager", "fast-compiled")
CPU_MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224")
CPU_BATCHES = (4, 8)
GPU_MODELS = ("vit_base_patch16_224.augreg_in21k",)
GPU_BATCHES = (32, 64, 128)
NUM_CLASSES = 309  # VGGSound head
PROFILE_STEPS = 2
ACCUM_STEPS = (1, 2, 4)  # --accum rows


@dataclass(frozen=True)
class Case:
    """One measured row: a model shape, an implementation and the precision it runs in."""

    vit: str
    batch: int
    impl: str
    precision: str  # "fp32" | "bf16" (autocast)
    img_size: int = 224
    depth: int | None = None  # None: the ViT's full depth
    accum_steps: int = 1  # micro-batches per training step (the batch is the global batch of the step)

    @property
    def shape(self) -> str:
        depth = f" depth {self.depth}" if self.depth else ""
        return f"{self.vit.split('.')[0]} {self.img_size}px{depth} B={self.batch}"

    @property
    def name(self) -> str:
        vit = self.vit.split(".")[0]
        accum = f"_accum{self.accum_steps}" if self.accum_steps > 1 else ""
        return f"{vit}_{self.img_size}_d{self.depth or 'all'}_b{self.batch}_{self.impl}_{self.precision}{accum}"

    def model_config(self) -> ModelConfig:
        over = {"model.vit": self.vit, "model.img_size": str(self.img_size), "model.depth": str(self.depth),
                "model.num_classes": str(NUM_CLASSES), "data.dataset": "vggsound"}
        if self.img_size != 224:  # the preset's spectrogram must be img_size square: the tiny preset's is 32 x 32
            return preset("tiny", over).model
        return preset("vggsound", over).model


@dataclass(frozen=True)
class Timing:
    """How many calls are warm-up (excluded) and timed, and the CPU threads."""

    warmup: int
    repeats: int
    threads: int


@dataclass
class Settings:
    """The whole run, as parsed from the command line."""

    device: torch.device
    cases: list[Case]
    timing: Timing
    out: Path
    profile: Path | None
    gemm_n: int
    note: str = ""
    run_id: str | None = None  # rows of one run share it; the report shows each device's newest run
    interleaved: bool = False  # time the training steps of a shape's rows in turns in one process instead
    accum: bool = False  # rows of ACCUM_STEPS micro-batches at the same global batch instead


# ---------------------------------------------------------------------------------------------- measuring one row

def _batch(case: Case, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded audio (B,1,S,S), image (B,1,3,S,S), label (B,1) with every 5th clip background (-1)."""
    g = torch.Generator().manual_seed(1)
    s = case.img_size
    audio = torch.randn(case.batch, 1, s, s, generator=g)
    image = torch.randn(case.batch, 1, 3, s, s, generator=g)
    label = torch.randint(0, NUM_CLASSES, (case.batch, 1), generator=g)
    label[::5] = -1
    return audio.to(device), image.to(device), label.to(device)


def build_model(case: Case, device: torch.device) -> torch.nn.Module:
    """Same seed -> the same weights for every implementation (ReferenceMAAVT has MAAVT's parameters)."""
    from maavt_fast.model import MAAVT
    from maavt_fast.model.reference import ReferenceMAAVT

    torch.manual_seed(0)
    cls = ReferenceMAAVT if case.impl == "reference" else MAAVT
    return cls(case.model_config()).to(device)


def _time_once(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call, synchronised on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _phase(prefix: str, fn, case: Case, timing: Timing, device: torch.device) -> dict:
    """The first call timed apart (it includes compilation), then `harness.measure` (warm-up excluded)."""
    first = _time_once(fn, device)
    m = harness.measure(fn, device, warmup=max(timing.warmup - 1, 0), repeats=timing.repeats)
    return {f"{prefix}_ms": m.median_ms, f"{prefix}_p20_ms": m.p20_ms, f"{prefix}_p80_ms": m.p80_ms,
            f"{prefix}_samples_per_s": case.batch / m.median_ms * 1e3, f"{prefix}_first_call_s": first,
            f"{prefix}_peak_mb": m.peak_bytes / 2 ** 20}


@dataclass
class Calls:
    """One row's model and its two timed calls: a training step (train mode) and an eval forward."""

    model: torch.nn.Module
    train: Callable[[], None]
    infer: Callable[[], None]
    last: dict  # the latest step's outputs (losses, logits)


def make_calls(case: Case, device: torch.device) -> Calls:
    """Model, inputs, `TrainStep` (compiled for fast-compiled; `AccumulatingTrainStep` with accum_steps > 1) and
    the eval forward of one row."""
    from maavt_fast.train.accumulate import AccumulatingTrainStep
    from maavt_fast.train.step import TrainStep, build_optimizer, choose_precision

    model = build_model(case, device)
    audio, image, label = _batch(case, device)
    precision = choose_precision(case.precision, device)
    compiled = case.impl == "fast-compiled"
    optimizer = build_optimizer(model, 1e-4, 0.0, device)
    if case.accum_steps > 1:
        step = AccumulatingTrainStep(model, model, optimizer, precision, device, case.accum_steps, compile=compiled)
    else:
        step = TrainStep(model, model, optimizer, precision, device, compile=compiled)
    forward = torch.compile(model) if compiled else model
    last: dict = {}
    counter = itertools.count()

    def train():
        model.train()
        last.update(step(audio, image, label, next(counter)))

    def infer():
        model.eval()
        with torch.inference_mode(), precision.autocast(device):
            last["logits"] = forward(audio, image).fg_logits

    return Calls(model, train, infer, last)


def run_case(case: Case, timing: Timing, device: torch.device, gemm_n: int, profile_dir: Path | None) -> dict:
    """Measure one row: the GEMM ceiling in its dtype, the training step, the inference forward, a profile."""
    fp32 = roofline.measure_gemm_tflops(device, torch.float32, gemm_n)
    result = {"gemm_fp32_tflops": fp32, "gemm_tflops": fp32 if case.precision == "fp32" else
              roofline.measure_gemm_tflops(device, torch.bfloat16, gemm_n)}
    calls = make_calls(case, device)
    result |= _phase("train", calls.train, case, timing, device)
    result["final_loss"] = float(calls.last["loss"])
    result |= _phase("infer", calls.infer, case, timing, device)
    if device.type == "cpu":  # the whole fresh process: imports, weights, compilation, every call
        result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if profile_dir is not None:
        for phase in ("train", "infer"):
            profiling.profile_steps(getattr(calls, phase), PROFILE_STEPS, profile_dir, f"{case.name}_{phase}",
                                        device)
        result["profile"] = str(profile_dir / case.name) + "_{train,infer}.{trace.json,top_ops.txt}"
    return result


def run_interleaved(settings: Settings, context: dict) -> list[dict]:
    """Training steps of all rows of a shape taken in turns in one process, with a GEMM of each dtype in every
    round, so every row and its ceiling see the same machine load: the steadiest speedups and fractions of GEMM
    on a shared machine. Rows go to `<out>/e2e.interleaved.json` / `.csv`."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows = []
    for shape in dict.fromkeys(c.shape for c in settings.cases):
        cases = [c for c in settings.cases if c.shape == shape]
        flops = count_flops(cases[0], settings.device)
        calls = {c: make_calls(c, settings.device) for c in cases}
        for c in cases:
            for _ in range(settings.timing.warmup):
                calls[c].train()
        times: dict[Case, list[float]] = {c: [] for c in cases}
        gemm: dict[str, list[float]] = {c.precision: [] for c in cases}
        for _ in range(settings.timing.repeats):
            for prec, rates in gemm.items():
                rates.append(roofline.measure_gemm_tflops(settings.device, dtypes[prec], settings.gemm_n, repeats=2))
            for c in cases:
                times[c].append(_time_once(calls[c].train, settings.device) * 1e3)
        ref = next((statistics.median(times[c]) for c in cases if c.impl == "reference"), None)
        for c in cases:
            med, ceiling = statistics.median(times[c]), statistics.median(gemm[c.precision])
            achieved = flops / (med * 1e-3) / 1e12
            row = context | case_columns(c) | {
                "shape": shape, "train_ms": med, "train_p20_ms": harness.percentile(times[c], 0.2),
                "train_p80_ms": harness.percentile(times[c], 0.8), "train_speedup": ref / med if ref else None,
                "flops_per_step": flops, "achieved_tflops": achieved, "gemm_tflops": ceiling,
                "fraction_of_gemm": achieved / ceiling}
            print(f"interleaved {shape:<32} {c.impl:<14} {c.precision:<5} train {med:9.1f} ms "
                  f"x{row['train_speedup'] or float('nan'):5.2f} {100 * achieved / ceiling:5.1f}% of GEMM "
                  f"{ceiling * 1e3:.0f} GFLOP/s", flush=True)
            rows.append(row)
        del calls
        gc.collect()
    harness.append_rows(rows, settings.out, "e2e.interleaved")
    return rows


def run_case_in_subprocess(case: Case, timing: Timing, gemm_n: int, profile_dir: Path | None) -> dict:
    """CPU: a fresh process per row, so each row's RSS is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        res_path = Path(tmp) / "row.json"
        job = {"case": dataclasses.asdict(case), "timing": dataclasses.asdict(timing), "gemm_n": gemm_n,
               "profile": str(profile_dir) if profile_dir else None, "result": str(res_path)}
        env = dict(os.environ, OMP_NUM_THREADS=str(timing.threads), MKL_NUM_THREADS=str(timing.threads))
        proc = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--worker", json.dumps(job)], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not res_path.is_file():
            return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"}
        return json.loads(res_path.read_text())


def _worker(job_json: str) -> int:
    job = json.loads(job_json)
    timing = Timing(**job["timing"])
    torch.set_num_threads(timing.threads)
    result = run_case(Case(**job["case"]), timing, torch.device("cpu"), job["gemm_n"],
                      Path(job["profile"]) if job["profile"] else None)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def _run_in_process(case: Case, settings: Settings) -> dict:
    """CUDA: rows share one process (and its compile caches); a failing row is recorded, not fatal."""
    try:
        return run_case(case, settings.timing, settings.device, settings.gemm_n, settings.profile)
    except Exception as e:  # noqa: BLE001 - one broken row must not lose the others
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- one result row

ROW_KEYS = (  # every row has exactly these columns (CSV-safe); None where a value does not apply
    "device", "device_type", "device_detail", "torch", "triton", "timm", "commit", "date", "run_id", "threads", "load_1min", "note",
    "shape", "vit", "img_size", "depth", "batch", "impl", "precision",
    "train_ms", "train_p20_ms", "train_p80_ms", "train_samples_per_s", "train_speedup", "train_speedup_adj",
    "train_first_call_s", "train_peak_mb", "train_peak_ratio",
    "infer_ms", "infer_p20_ms", "infer_p80_ms", "infer_samples_per_s", "infer_speedup", "infer_speedup_adj",
    "infer_first_call_s", "infer_peak_mb", "infer_peak_ratio", "process_peak_rss_mb",
    "flops_per_step", "achieved_tflops", "gemm_tflops", "gemm_fp32_tflops", "fraction_of_gemm",
    "published_peak_tflops", "mfu",
    "final_loss", "profile", "error",
)
ACCUM_ROW_KEYS = ROW_KEYS + ("accum_steps",)  # --accum rows (their own file): the micro-batches per step


def case_columns(case: Case, accum: bool = False) -> dict:
    """The case's row columns: `accum_steps` only in --accum rows (the other files keep their columns)."""
    columns = dataclasses.asdict(case)
    if not accum:
        del columns["accum_steps"]
    return columns


def finish_row(case: Case, measured: dict, ref: dict | None, flops: int, context: dict, accum: bool = False) -> dict:
    """Flat row: context + case + measurements, ratios to `ref` (the shape's reference row) and roofline numbers."""
    row = dict.fromkeys(ACCUM_ROW_KEYS if accum else ROW_KEYS) | context | case_columns(case, accum) | \
        {"shape": case.shape} | measured
    row["load_1min"] = round(os.getloadavg()[0], 2)  # at the end of this row (the context's is the run's start)
    if row["error"] is not None:
        return row
    add_reference_ratios(row, row if case.impl == "reference" else ref)
    row["flops_per_step"] = flops
    row["achieved_tflops"] = flops / (row["train_ms"] * 1e-3) / 1e12
    row["fraction_of_gemm"] = row["achieved_tflops"] / row["gemm_tflops"]
    row["published_peak_tflops"] = roofline.published_peak(row["device"], case.precision)
    if row["published_peak_tflops"]:
        row["mfu"] = row["achieved_tflops"] / row["published_peak_tflops"]
    return row


def add_reference_ratios(row: dict, ref: dict | None) -> None:
    """Speedups (reference time / row time) and peak-memory ratios (row / reference) of both phases.

    `*_speedup_adj` corrects for a shared machine: each time is first multiplied by the fp32 GEMM rate
    measured in its own process (a time in units of "large fp32 matmuls"), so a row that ran while other
    jobs slowed the cores down is not counted as slower.
    """
    if ref is None or ref["error"] is not None:
        return
    load = ref["gemm_fp32_tflops"] / row["gemm_fp32_tflops"] if ref.get("gemm_fp32_tflops") and \
        row.get("gemm_fp32_tflops") else None
    for phase in ("train", "infer"):
        row[f"{phase}_speedup"] = ref[f"{phase}_ms"] / row[f"{phase}_ms"]
        row[f"{phase}_speedup_adj"] = row[f"{phase}_speedup"] * load if load else None
        ref_peak = ref[f"{phase}_peak_mb"]
        row[f"{phase}_peak_ratio"] = row[f"{phase}_peak_mb"] / ref_peak if ref_peak > 0 else None


def earlier_references(out: Path, run_id: str | None) -> dict[str, dict]:
    """Reference rows already in `<out>/e2e.json` under `run_id` (a continued run), by shape."""
    path = out / "e2e.json"
    if run_id is None or not path.is_file():
        return {}
    return {r["shape"]: r for r in json.loads(path.read_text())
            if r["run_id"] == run_id and r["impl"] == "reference" and r["error"] is None}


def print_row(r: dict) -> None:
    head = f"{r['shape']:<32} {r['impl']:<14} {r['precision']:<5}" + (
        f" accum {r['accum_steps']}" if (r.get("accum_steps") or 1) > 1 else "")
    if r["error"] is not None:
        print(f"{head} FAILED: {r['error'].strip().splitlines()[-1]}", flush=True)
        return

    def x(v):
        return f"x{v:5.2f}" if v is not None else "   -  "

    print(f"{head} train {r['train_ms']:9.1f} ms [{r['train_p20_ms']:.1f}, {r['train_p80_ms']:.1f}] "
          f"{r['train_samples_per_s']:8.2f}/s {x(r['train_speedup'])} (adj {x(r['train_speedup_adj'])}) | "
          f"infer {r['infer_ms']:9.1f} ms "
          f"{r['infer_samples_per_s']:8.2f}/s {x(r['infer_speedup'])} | step mem {r['train_peak_mb']:7.0f} MiB "
          f"{x(r['train_peak_ratio'])} | {r['achieved_tflops'] * 1e3:7.1f} GFLOP/s = "
          f"{100 * r['fraction_of_gemm']:5.1f}% of GEMM {r['gemm_tflops'] * 1e3:.0f}"
          + (f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] else ""), flush=True)


# ---------------------------------------------------------------------------------------------- the whole run

def device_detail(device: torch.device) -> str:
    model = harness.device_model(device)
    return model if device.type == "cuda" else f"{model}, {os.cpu_count()} cores"


def count_flops(case: Case, device: torch.device) -> int:
    """FLOPs per training step of this shape (fast model, math attention, fp32)."""
    fast = dataclasses.replace(case, impl="fast-eager", precision="fp32")
    return roofline.count_step_flops(build_model(fast, device), *_batch(fast, device))


def run(settings: Settings) -> list[dict]:
    """Measure every case (CPU: one subprocess each); append each finished row to `<out>/e2e.json` / `.csv`."""
    import timm

    dev = settings.device
    context = harness.environment(dev) | {
        "device_detail": device_detail(dev), "timm": timm.__version__, "threads": settings.timing.threads,
        "note": settings.note,
        "run_id": settings.run_id or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"}
    print(f"e2e on {context['device_detail']} ({context['commit']}), warm-up {settings.timing.warmup}, "
          f"repeats {settings.timing.repeats}, {settings.timing.threads} threads", flush=True)
    if settings.interleaved:
        return run_interleaved(settings, context)
    flops, refs, rows = {}, earlier_references(settings.out, settings.run_id), []
    name = "e2e.accum" if settings.accum else "e2e"
    for case in settings.cases:
        if case.shape not in flops:
            flops[case.shape] = count_flops(case, dev)
            print(f"{case.shape}: {flops[case.shape] / 1e9:.1f} GFLOP per training step (counted)", flush=True)
        measured = run_case_in_subprocess(case, settings.timing, settings.gemm_n, settings.profile) \
            if dev.type == "cpu" else _run_in_process(case, settings)
        row = finish_row(case, measured, refs.get(case.shape), flops[case.shape], context, settings.accum)
        if case.impl == "reference" or (case.accum_steps == 1 and settings.accum):
            refs[case.shape] = row
        print_row(row)
        harness.append_rows([row], settings.out, name)  # one row at a time: a timeout keeps what finished
        rows.append(row)
    print(f"appended {len(rows)} rows to {settings.out / name}.json and .csv")
    return rows


# ---------------------------------------------------------------------------------------------- command line

def _csv(kind):
    return lambda s: tuple(kind(x) for x in s.split(",") if x)


def build_cases(device: torch.device, quick: bool, models, batches, impls, precisions,
                accum: bool = False) -> list[Case]:
    from maavt_fast.train.step import cpu_has_native_bf16

    if accum:  # ViT-S (quick: the tiny model) fast-eager, fp32 on CPU, at a global batch that splits in 4
        models = models or (("vit_tiny_patch16_224",) if quick else ("vit_small_patch16_224",))
        batches, size, depth = batches or ((4,) if quick else (8,)), 32 if quick else 224, 2 if quick else None
        precisions = precisions or (("bf16",) if device.type == "cuda" else ("fp32",))
        return [Case(vit, b, impl, p, size, depth, k) for vit in models for b in batches
                for impl in impls or ("fast-eager",) for p in precisions for k in ACCUM_STEPS if b % k == 0]
    if quick:
        models, batches, size, depth = models or ("vit_tiny_patch16_224",), batches or (2,), 32, 2
    elif device.type == "cuda":
        models, batches, size, depth = models or GPU_MODELS, batches or GPU_BATCHES, 224, None
    else:
        models, batches, size, depth = models or CPU_MODELS, batches or CPU_BATCHES, 224, None
    if not precisions:
        bf16 = device.type == "cuda" or cpu_has_native_bf16()
        precisions = ("bf16",) if device.type == "cuda" else ("fp32", "bf16") if bf16 and not quick else ("fp32",)
    cases = []
    for vit in models:
        for b in batches:
            for impl in impls or IMPLS:
                for p in ("fp32",) if impl == "reference" else precisions:  # the release runs the reference in fp32
                    cases.append(Case(vit, b, impl, p, size, depth))
    return cases


def parse_args(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model (depth 2, 32x32), B=2, 1 repeat: a smoke run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for e2e.json / e2e.csv")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help=f"also write a torch.profiler Chrome trace + top-ops table of {PROFILE_STEPS} calls per row")
    p.add_argument("--models", type=_csv(str), default=None, help="comma-separated timm ViT names")
    p.add_argument("--batches", type=_csv(int), default=None, help="comma-separated batch sizes")
    p.add_argument("--impls", type=_csv(str), default=None, help=f"subset of {','.join(IMPLS)}")
    p.add_argument("--precisions", type=_csv(str), default=None, help="fast rows: subset of fp32,bf16")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per phase (default 2; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per phase (default 5 CPU, 20 GPU; quick 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per row")
    p.add_argument("--note", default="", help="free text saved with the results (e.g. machine load)")
    p.add_argument("--interleaved", action="store_true",
                   help="instead: training steps of each shape's rows in turns in one process (steady ratios on a "
                        "shared machine; no memory, inference or roofline), to e2e.interleaved.json")
    p.add_argument("--accum", action="store_true",
                   help=f"instead: gradient accumulation, fast-eager steps of one global batch in "
                        f"{'/'.join(map(str, ACCUM_STEPS))} micro-batches (accum_steps column)")
    p.add_argument("--run-id", default=None, help="continue an earlier run (its rows are rendered together)")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    for impl in a.impls or ():
        if impl not in IMPLS:
            p.error(f"--impls: {impl!r} is not one of {', '.join(IMPLS)}")
    repeats = a.repeats or (1 if a.quick else 20 if device.type == "cuda" else 5)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    gemm_n = 256 if a.quick else 8192 if device.type == "cuda" else 2048
    if a.accum and a.interleaved:
        p.error("--accum and --interleaved are separate modes: give one")
    cases = build_cases(device, a.quick, a.models, a.batches, a.impls, a.precisions, a.accum)
    return Settings(device, cases, Timing(warmup, repeats, a.threads), a.out, a.profile, gemm_n, a.note, a.run_id,
                    a.interleaved, a.accum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1])
    settings = parse_args(argv)
    if settings.device.type == "cpu":
        torch.set_num_threads(settings.timing.threads)
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
