"""Render `benchmarks/results/*.json` into `benchmarks/RESULTS.md` (tables) and PNG charts beside the JSON.

The end-to-end results (`e2e.json`) get their own tables (the latest run per device), a check of the
performance targets and two charts per device; every other result file (`ops.json`, `data.json`, ...)
gets a plain table of its latest run per device. `e2e.notes.md`, when present, is copied in as the
analysis of the end-to-end numbers.

    python -m benchmarks.report [--results DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_KEYS = ("device", "torch", "triton", "timm", "commit", "date", "run_id", "note", "device_detail", "threads",
            "load_1min")
IMPL_ORDER = ("reference", "fast-eager", "fast-compiled")
# The performance targets: (device type, ViT name prefix, batch) -> minimum speedup, minimum fraction of GEMM /
# MFU, maximum step-memory ratio to the reference.
TARGETS = {"cpu": ("vit_small", 8, 2.0, ("fraction_of_gemm", 0.6), 0.6),
           "cuda": ("vit_base", 64, 5.0, ("mfu", 0.4), None)}


def _fmt(v, digits: int = 3) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _get(r: dict, key: str, scale: float):
    return r[key] * scale if r.get(key) is not None else None


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def latest_runs(rows: list[dict]) -> dict[str, list[dict]]:
    """{device type: rows of the newest run_id measured on it} (run ids start with a UTC timestamp)."""
    by_dev: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        kind = r.get("device_type") or ("cpu" if r["device"].startswith("cpu") else "cuda")  # older rows: no type
        by_dev.setdefault(kind, {}).setdefault(r["run_id"], []).append(r)
    return {kind: runs[max(runs)] for kind, runs in sorted(by_dev.items())}


def _order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["vit"], r["img_size"], r["batch"], IMPL_ORDER.index(r["impl"]),
                                       ("fp32", "bf16").index(r["precision"])))


def e2e_table(rows: list[dict], gpu: bool) -> str:
    header = ["shape", "impl", "prec", "train ms (p20–p80)", "train /s", "train × ref", "(adj)", "infer ms",
              "infer /s", "infer × ref", "(adj)", "step MiB", "MiB ÷ ref", "process MiB", "GFLOP/step",
              "TFLOP/s" if gpu else "GFLOP/s", "% of GEMM", "MFU", "load"]
    lines = []
    for r in _order(rows):
        if r["error"]:
            lines.append([r["shape"], r["impl"], r["precision"], "failed: " + r["error"].strip().splitlines()[-1][:80]]
                         + ["–"] * (len(header) - 4))
            continue
        rate = r["achieved_tflops"] * (1 if gpu else 1e3)
        lines.append([r["shape"], r["impl"], r["precision"],
                      f"{r['train_ms']:.1f} ({r['train_p20_ms']:.1f}–{r['train_p80_ms']:.1f})",
                      _fmt(r["train_samples_per_s"]), _x(r["train_speedup"]), _x(r.get("train_speedup_adj")),
                      f"{r['infer_ms']:.1f}", _fmt(r["infer_samples_per_s"]), _x(r["infer_speedup"]),
                      _x(r.get("infer_speedup_adj")), _fmt(r["train_peak_mb"]),
                      _x(r["train_peak_ratio"]), _fmt(r["process_peak_rss_mb"]),
                      _fmt(r["flops_per_step"] / 1e9), _fmt(rate), _pct(r["fraction_of_gemm"]), _pct(r["mfu"]),
                      _fmt(r["load_1min"])])
    return _table(header, lines)


def target_check(rows: list[dict], kind: str, interleaved: list[dict] = ()) -> str:
    """The performance targets for this device type, for the best fast row of the target shape.

    Speed and fraction of GEMM come from the interleaved rows when there are any (one process, same load for
    every row and its GEMM); otherwise from the per-row runs. Memory always comes from the per-row runs."""
    vit, batch, speedup, (eff_key, eff_min), mem_max = TARGETS[kind]

    def fast_rows(rs):
        return [r for r in rs if r["vit"].startswith(vit) and r["batch"] == batch and r["impl"] != "reference"
                and not r.get("error") and r["train_speedup"] is not None]

    speed_rows, source = (fast_rows(interleaved), "interleaved") if fast_rows(interleaved) else \
        (fast_rows(rows), "separate processes")
    if not speed_rows:
        return f"No measured fast row with a reference for {vit} B={batch}: targets not checked."
    best = max(speed_rows, key=lambda r: r["train_speedup"])
    own = next((r for r in fast_rows(rows) if (r["impl"], r["precision"]) == (best["impl"], best["precision"])), {})
    eff = best.get(eff_key)
    checks = [(f"training speedup vs reference ({source})", _x(best["train_speedup"]), f">= {speedup:.0f}x",
               best["train_speedup"] >= speedup),
              (f"{eff_key.replace('_', ' ')} ({source})", _pct(eff), f">= {eff_min:.0%}",
               eff is not None and eff >= eff_min)]
    if mem_max is not None:
        ratio = own.get("train_peak_ratio")
        checks.append(("step peak memory ÷ reference (fresh processes)", _x(ratio), f"<= {mem_max}x",
                       ratio is not None and ratio <= mem_max))
    lines = [[name, got, want, "met" if ok else "**missed**"] for name, got, want, ok in checks]
    return (f"Best fast row for {vit} B={batch}: `{best['impl']}` {best['precision']}.\n\n"
            + _table(["target", "measured", "wanted", ""], lines))


def e2e_charts(rows: list[dict], out_dir: Path, kind: str, source: str) -> list[Path]:
    """Training throughput per row; achieved compute per row against the GEMM rate measured beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ok = [r for r in _order(rows) if not r.get("error")]
    if not ok:
        return []
    unit, scale = ("TFLOP/s", 1.0) if kind == "cuda" else ("GFLOP/s", 1e3)
    colors = {"reference": "tab:gray", "fast-eager": "tab:blue", "fast-compiled": "tab:green"}
    xs = range(len(ok))
    paths = []
    for name, ylabel in (("throughput", "training samples/s"), ("roofline", f"training step {unit}")):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(ok) + 2), 5.0))
        values = [r["batch"] / r["train_ms"] * 1e3 if name == "throughput" else r["achieved_tflops"] * scale
                  for r in ok]
        ax.bar(xs, values, color=[colors[r["impl"]] for r in ok],
               edgecolor=["black" if r["precision"] == "bf16" else "none" for r in ok], linewidth=1.5)
        if name == "roofline":
            ax.scatter(xs, [r["gemm_tflops"] * scale for r in ok], marker="_", s=400, color="tab:red",
                       label="large GEMM of the row's dtype, measured beside it")
            for x, r, v in zip(xs, ok, values):
                ax.annotate(f"{100 * r['fraction_of_gemm']:.0f}%", (x, v), ha="center", va="bottom", fontsize=7)
            peaks = {r["precision"]: r["published_peak_tflops"] for r in ok if r.get("published_peak_tflops")}
            for prec, peak in peaks.items():
                ax.axhline(peak * scale, ls=":", color="black", label=f"published dense {prec} peak {peak:g} TFLOP/s")
            ax.set_yscale("log")
        ax.set_xticks(list(xs), [f"{r['shape']}\n{r['impl']} {r['precision']}" for r in ok], rotation=75, fontsize=6)
        ax.set_ylabel(ylabel)
        handles = [Patch(color=c, label=impl) for impl, c in colors.items()] + [
            Patch(facecolor="white", edgecolor="black", label="bf16 autocast (outlined)")]
        ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="best")
        ax.set_title(f"e2e {ylabel} on {ok[0]['device_detail'] or ok[0]['device']} ({source})", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"e2e.{kind}.{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def e2e_section(rows: list[dict], results: Path, md_dir: Path) -> str:
    parts = ["## End-to-end training and inference (`benchmarks/e2e.py`)",
             "Rows: `reference` (the release's computation order, fp32), `fast-eager` and `fast-compiled` "
             "(`torch.compile`d step) on the same weights and inputs. Times are medians over repeats after "
             "warm-up (p20–p80 in brackets); `× ref` is the reference's median over the row's (higher is "
             "faster); `(adj)` is that ratio with each time first multiplied by the fp32 GEMM rate measured in "
             "the row's own process, which cancels a slowdown of the whole machine by other jobs. `step MiB` "
             "is the peak memory one call adds above the resident model, inputs and optimizer state (CUDA: "
             "`max_memory_allocated`; CPU: peak RSS of the row's own fresh process); "
             "`process MiB` is that process's whole peak RSS (imports, compilation included). FLOPs per "
             "training step are counted with `torch.utils.flop_counter` (forward + backward, math attention); "
             "`% of GEMM` divides the step's FLOP/s by a large matmul of the row's dtype measured in the same "
             "process; MFU uses the published dense peak."]
    interleaved = results / "e2e.interleaved.json"
    interleaved_rows = json.loads(interleaved.read_text()) if interleaved.is_file() else []
    for kind, run in latest_runs(rows).items():
        r0 = run[0]
        commits = ", ".join(f"`{c}`" for c in dict.fromkeys(r["commit"] for r in run))
        parts.append(f"### {r0['device_detail'] or r0['device']}\n\nRun `{r0['run_id']}`, commit {commits}, "
                     f"{r0['date']}, torch {r0['torch']}, triton {r0['triton']}, timm {r0['timm']}, "
                     f"{r0['threads']} CPU threads. {r0['note'] or ''}")
        parts.append(e2e_table(run, gpu=kind == "cuda"))
        inter = latest_runs(interleaved_rows).get(kind, [])
        parts.append("Performance targets:\n\n" + target_check(run, kind, inter))
        charted, source = (inter, "interleaved rows") if inter else (run, "rows in separate processes")
        for png in e2e_charts(charted, results, kind, source):
            parts.append(f"![{png.stem}]({os.path.relpath(png, md_dir)})")
    for kind, run in latest_runs(interleaved_rows).items():
        parts.append(f"### Interleaved training steps ({kind}, run `{run[0]['run_id']}`)\n\n"
                     "`maavt bench e2e --interleaved`: the training steps of all rows of a shape taken in turns in "
                     "one process, with a large GEMM of each dtype in every round, so rows and ceilings see the same "
                     "machine load (no memory numbers).")
        parts.append(_table(["shape", "impl", "prec", "train ms (p20–p80)", "train × ref", "GEMM GFLOP/s",
                             "% of GEMM"], [
            [r["shape"], r["impl"], r["precision"], f"{r['train_ms']:.1f} ({r['train_p20_ms']:.1f}–"
             f"{r['train_p80_ms']:.1f})", _x(r["train_speedup"]), _fmt(_get(r, "gemm_tflops", 1e3)),
             _pct(r.get("fraction_of_gemm"))] for r in _order(run)]))
    notes = results / "e2e.notes.md"
    if notes.is_file():
        parts.append(notes.read_text().strip())
    return "\n\n".join(parts)


OPS_TARGETS = (  # GPU (bf16, fwd+bwd): op, base shape, baseline provider, minimum speedup of triton over it
    ("contrastive", {"L": 12, "B": 256, "P": 512}, "reference", 3.0),
    ("contrastive", {"L": 12, "B": 256, "P": 512}, "reference-compiled", 1.5),
    ("sigmoid", {"L": 12, "B": 1024, "P": 512}, "reference", 3.0),
    ("sigmoid", {"L": 12, "B": 1024, "P": 512}, "reference-compiled", 1.5),
    ("group_attention", {"G": 3, "M": 64, "n": 5, "D": 768, "heads": 8}, "reference", 3.0),
)
# per loss op: the batch where the fused kernel keeps O(B·P) memory and the references hold L·B² logits
BIG_B = {"contrastive": 16384, "sigmoid": 32768}


def latest_ops_runs(rows: list[dict]) -> dict[str, list[dict]]:
    """{device type: rows of its newest run}; rows of the older schema (no `run` column) are left out."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        if r.get("run"):
            runs.setdefault(r["device_type"], {}).setdefault(r["run"], []).append(r)
    return {kind: by_run[max(by_run)] for kind, by_run in sorted(runs.items())}


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    if r["error"]:
        return "failed: " + r["error"].split(":")[0]
    ms = (f"{v:.0f}" if v >= 100 else f"{v:.3g}" for v in (r["p50_ms"], r["p20_ms"], r["p80_ms"]))
    return "{} ({}–{}) · {:.3g} MiB".format(*ms, r["peak_mb"])


def _shape(r: dict, dims: tuple[str, ...]) -> str:
    return ", ".join(f"{d}={r[d]}" for d in dims)


def ops_table(run: list[dict]) -> str:
    """One line per (op, shape, mode): every provider's p50 (p20–p80) ms · peak MiB, then triton's speedups."""
    from benchmarks.ops import DIMS, MODES, PROVIDERS

    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in run)]
    by_key = {(r["op"], _shape(r, DIMS[r["op"]]), r["mode"], r["provider"], r["config"]): r for r in run}
    lines = []
    for op, shape in dict.fromkeys((r["op"], _shape(r, DIMS[r["op"]])) for r in run):
        for mode in MODES:
            cells = {p: by_key.get((op, shape, mode, p, "")) for p in providers}
            fused = [r for k, r in by_key.items() if k[:4] == (op, shape, mode, "triton")]
            fastest = min((r for r in fused if not r["error"]), key=lambda r: r["p50_ms"], default=None)
            speedups = [f"{cells[p]['p50_ms'] / fastest['p50_ms']:.2f}x" if fastest and cells.get(p)
                        and not cells[p]["error"] else "–" for p in ("reference", "reference-compiled")]
            lines.append([op, shape, mode] + [_cell(cells[p]) if p != "triton" else _cell(fastest)
                                              for p in providers] + speedups)
    return _table(["op", "shape", "mode", *(f"{p} ms (p20–p80) · peak" for p in providers),
                   "triton × reference", "triton × compiled"], lines)


def ops_targets(cuda: list[dict]) -> str:
    """The GPU targets, checked on the newest CUDA run, or listed as not measured."""
    from benchmarks.ops import DIMS

    if not cuda:
        lines = [[f"{op} triton ≥ {x:g}x {base} (fwd+bwd, bf16, {_shape(shape, DIMS[op])})", "not measured (no GPU)"]
                 for op, shape, base, x in OPS_TARGETS]
        lines += [[f"{op} peak memory O(B·P): triton runs B={b} where the references cannot", "not measured (no GPU)"]
                  for op, b in BIG_B.items()]
        return _table(["GPU target", "status"], lines)

    def find(op, shape, provider):
        return next((r for r in cuda if r["op"] == op and r["mode"] == "fwd+bwd" and r["provider"] == provider
                     and all(r[k] == v for k, v in shape.items()) and not r["error"]), None)

    lines = []
    for op, shape, base, want in OPS_TARGETS:
        fused, ref = find(op, shape, "triton"), find(op, shape, base)
        got = ref["p50_ms"] / fused["p50_ms"] if fused and ref else None
        lines.append([f"{op} triton ≥ {want:g}x {base} (fwd+bwd, bf16, {_shape(shape, DIMS[op])})",
                      "not measured" if got is None else f"{got:.2f}x: " + ("met" if got >= want else "**missed**")])
    for op, b in BIG_B.items():
        big = {p: next((r for r in cuda if r["op"] == op and r["B"] == b and r["provider"] == p
                        and r["mode"] == "fwd+bwd"), None) for p in ("triton", "reference")}
        status = " / ".join(f"{p}: " + ("not run" if r is None else r["error"].split(":")[0] if r["error"]
                                        else f"{r['peak_mb']:.0f} MiB") for p, r in big.items())
        lines.append([f"{op} peak memory O(B·P) at B={b}", status])
    return _table(["GPU target", "measured"], lines)


def model_check(cuda: list[dict]) -> str:
    """The contrastive kernels' predicted H200 times (`maavt_fast.kernels.perf_model`, docs/performance.md) beside
    the newest CUDA run's medians (fwd+bwd, L = 12, P = 512), or "not measured (no GPU)"."""
    from maavt_fast.kernels import perf_model as pm

    def measured(provider: str, B: int) -> str:
        row = next((r for r in cuda if r["op"] == "contrastive" and r["mode"] == "fwd+bwd" and r["provider"] == provider
                    and (r["L"], r["B"], r["P"]) == (pm.L, B, pm.P) and not r["config"] and not r["error"]), None)
        return "not measured (no GPU)" if not cuda else "not run" if row is None else f"{row['p50_ms'] * 1e3:.0f}"

    lines = [[str(B), f"{(pm.contrastive_forward(B).seconds() + pm.contrastive_backward(B).seconds()) * 1e6:.0f}",
              measured("triton", B), f"{pm.contrastive_eager(B).seconds() * 1e6:.0f}", measured("openclip", B)]
             for B in pm.BATCHES]
    return _table(["B", "fused predicted µs", "triton measured µs", "eager bf16 predicted µs",
                   "openclip measured µs"], lines)


def ops_section(rows: list[dict], results: Path, md_dir: Path) -> str:
    parts = ["## Fused ops (`python -m benchmarks.ops`)",
             "Every provider on the same inputs in one run: `reference` (the PyTorch reference, eager), "
             "`reference-compiled` (`torch.compile` of it), `triton` (the fused kernels), and what users write "
             "today: `openclip` (OpenCLIP's ClipLoss, or SigLipLoss for `sigmoid`, written out, once per block) "
             "and `per-group` (one attention per group, as the release runs). Cells: median ms per call (p20–p80) · the peak memory one call "
             "adds. `fwd` records autograd as in training; `bwd` differentiates one kept graph; `fwd+bwd` both. "
             "`triton × reference` is the reference's median over triton's (higher: triton faster). Raw rows: "
             "`results/ops.csv` / `ops.json` (columns in the README's Benchmarks section)."]
    runs = latest_ops_runs(rows)
    for kind, run in runs.items():
        r0 = run[0]
        loads = sorted(r["load_1min"] for r in run)
        parts.append(f"### {r0['device']} ({kind}, {r0['threads']} threads, {r0['dtype']})\n\n"
                     f"Run `{r0['run']}`, commit `{r0['commit']}`, torch {r0['torch']}, triton {r0['triton']}, "
                     f"timer `{next((r['timer'].split('(')[0] for r in run if r['timer']), '')}`, 1-min load "
                     f"{loads[0]:g}–{loads[-1]:g}.")
        parts.append(ops_table(run))
        png = results / "ops.png"
        if png.is_file() and kind == max(runs, key=lambda k: runs[k][0]["run"]):  # the plot is of the newest run
            parts.append(f"![ops]({os.path.relpath(png, md_dir)})")
    parts.append("### GPU targets\n\n" + ops_targets(runs.get("cuda", [])))
    parts.append("### Contrastive kernels against the performance model (fwd+bwd, L = 12, P = 512)\n\n"
                 "Predictions for an H200 from `maavt_fast.kernels.perf_model` (see docs/performance.md); "
                 "measured medians from the newest CUDA run.\n\n" + model_check(runs.get("cuda", [])))
    notes = results / "ops.notes.md"  # dated notes on the runs above
    if notes.is_file():
        parts.append(notes.read_text().strip())
    return "\n\n".join(parts)


def generic_section(name: str, rows: list[dict], results: Path, md_dir: Path) -> str:
    """A plain table of the newest run of each device in a list-of-rows result file."""
    parts = [f"## `{name}.json`"]
    by_dev: dict[str, list[dict]] = {}
    for r in rows:
        by_dev.setdefault(r.get("device", "?"), []).append(r)
    for dev, mine in sorted(by_dev.items()):
        last = max(mine, key=lambda r: r.get("date", ""))
        newest = [r for r in mine if r.get("commit") == last.get("commit") and _within_hour(r, last)]
        cols = [k for k in newest[0] if k not in ENV_KEYS and not isinstance(newest[0][k], (list, dict))]
        parts.append(f"### {dev}: commit `{last.get('commit')}`, {last.get('date')}")
        parts.append(_table(cols, [[_fmt(r.get(k)) for k in cols] for r in newest]))
    png = results / f"{name}.png"
    if png.is_file():
        parts.append(f"![{name}]({os.path.relpath(png, md_dir)})")
    return "\n\n".join(parts)


def _within_hour(r: dict, last: dict) -> bool:
    try:
        t0 = datetime.datetime.fromisoformat(last["date"].replace("Z", "+00:00"))
        return t0 - datetime.datetime.fromisoformat(r["date"].replace("Z", "+00:00")) <= datetime.timedelta(hours=1)
    except (KeyError, ValueError, AttributeError):
        return True


def render(results: Path, out: Path) -> Path:
    """Write `out` (Markdown) from every `*.json` under `results`; charts go next to the JSON files."""
    sections = ["# Benchmark results",
                "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json` (the newest run of "
                "each benchmark per device); do not edit by hand. Reproduce with `python -m benchmarks.ops`, "
                "`python -m benchmarks.e2e` (CPU: about half an hour on 2 cores), `python -m benchmarks.data`, "
                "or `bash benchmarks/gpu_check.sh` on a GPU machine."]
    for path in sorted(results.glob("*.json")):
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            sections.append(f"## `{path.name}`\n\nNot a list of result rows; skipped.")
        elif path.stem == "e2e":
            sections.append(e2e_section(rows, results, out.parent))
        elif path.stem == "ops":
            sections.append(ops_section(rows, results, out.parent))
        elif path.stem == "e2e.interleaved":
            continue  # rendered inside the e2e section
        else:
            sections.append(generic_section(path.stem, rows, results, out.parent))
    out.write_text("\n\n".join(sections) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    path = render(a.results, a.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
