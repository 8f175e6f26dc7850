"""`maavt` command line: demo, train, eval, synth, prepare, convert, bench.

Commands that build a model take `--preset NAME` and/or `--config FILE` (YAML or JSON; layered as
preset, then the file, then the options) plus any number of dotted config overrides such as
`--train.batch_size 32` or `--model.vit=vit_small_patch16_224`; `maavt <command> --help` lists every
config field with its type and meaning.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import typing
import warnings
from pathlib import Path

from maavt_fast._extras import MissingExtraError
from maavt_fast.config import PRESETS, Config, ConfigError, preset
from maavt_fast.config_file import layered_config, read_config_file, with_absolute_paths

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3  # the loss, weights or optimizer state became NaN/inf; no checkpoint was overwritten with them
EXIT_RANK_TIMEOUT = 4  # under torchrun, a collective waited past train.dist_timeout_s (a hung or dead rank)
# a run stopped by SIGINT / SIGTERM exits 128 + the signal number: 130 / 143, with `latest` written
SYNTHETIC_PRESETS = ("synthetic", "tiny")  # presets for data `maavt synth` writes


class CliError(Exception):
    """A user error the CLI reports in one line (exit status 2)."""


# ----------------------------------------------------------------------------------------------- config options

def _type_name(t) -> str:
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if args and typing.get_origin(t) is not tuple:
        return _type_name(args[0]) + ("|none" if type(None) in typing.get_args(t) else "")
    if typing.get_origin(t) is tuple:
        items = typing.get_args(t)
        if items[-1] is Ellipsis:
            return f"{_type_name(items[0])},..."
        return ",".join(_type_name(a) for a in items)
    return {bool: "true|false", int: "INT", float: "FLOAT", str: "STR"}.get(t, str(t))


def config_options_help(cls=Config, prefix: str = "") -> list[str]:
    """Two lines per config field: `--section.field TYPE` (or its choices), its help text and default."""
    lines, hints, defaults = [], typing.get_type_hints(cls), cls()
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            lines += config_options_help(t, f"{prefix}{f.name}.")
            continue
        meaning = f.metadata.get("help", "")
        kind = "|".join(f.metadata["choices"]) if "choices" in f.metadata else _type_name(t)
        default = getattr(defaults, f.name)
        lines.append(f"  --{prefix}{f.name} {kind}\n      {meaning + ' ' if meaning else ''}(default {default!r})")
    return lines


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """`["--train.lr", "1e-3", "--model.depth=4"]` -> {"train.lr": "1e-3", "model.depth": "4"}."""
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok.split("=", 1)[0]:
            raise CliError(f"unrecognized argument {tok!r}; config overrides look like --train.batch_size 32 "
                           "(see --help for every field)")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise CliError(f"config override --{key} needs a value")
            value, i = tokens[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def resolve_config(args, overrides: dict[str, str], fallback: Config | None = None) -> Config:
    """Layered: --preset NAME (else `fallback`, e.g. the checkpoint's config, else the defaults when only
    --config is given), then --config FILE (YAML or JSON, any subset of the keys), then dotted overrides."""
    file = getattr(args, "config", None)
    if getattr(args, "preset", None):
        base = preset(args.preset)
    elif fallback is not None:
        base = fallback
    elif file:
        base = Config()
    else:
        raise CliError(f"give --preset (one of {', '.join(PRESETS)}) and/or --config FILE (YAML or JSON)")
    return layered_config(base, file, overrides)


def _add_config_args(p: argparse.ArgumentParser, preset_required: bool = False) -> None:
    p.add_argument("--preset", choices=list(PRESETS), required=preset_required,
                   help="a named complete config: " + ", ".join(PRESETS))
    p.add_argument("--config", metavar="FILE", help="a YAML or JSON config (any subset of the keys, e.g. a run's "
                   "config.json), applied over --preset; dotted options apply over both")


# ----------------------------------------------------------------------------------------------- commands

def cmd_demo(args, overrides) -> int:
    from maavt_fast.train.demo import run_demo

    run_demo(args.out, device=args.device, num_classes=args.classes, clips_per_class=args.clips_per_class,
             overrides=overrides)
    return 0


def cmd_train(args, overrides) -> int:
    from maavt_fast.train.checkpoint import checkpoint_config, read_checkpoint
    from maavt_fast.train.run import run_train

    fallback = None
    if args.resume not in (None, "auto") and not (args.preset or args.config):
        fallback = checkpoint_config(read_checkpoint(args.resume), args.resume)
    cfg = with_absolute_paths(resolve_config(args, overrides, fallback))
    run_train(cfg, resume=args.resume, test_split=None if args.no_test else args.test_split,
              overwrite=args.overwrite, adapt_num_classes=_data_defines_classes(args, overrides, cfg))
    return 0


def _data_defines_classes(args, overrides: dict[str, str], cfg: Config) -> bool:
    """A run whose class count nobody set (no option, not in the --config file) on a CSV manifest or a synthetic
    set takes the data's class count (the same again when it resumes)."""
    if "model.num_classes" in overrides:
        return False
    if args.config and "num_classes" in (read_config_file(args.config).get("model") or {}):
        return False
    return cfg.data.dataset == "csv" or args.preset in SYNTHETIC_PRESETS


def cmd_eval(args, overrides) -> int:
    from maavt_fast.train.checkpoint import checkpoint_config, is_official, read_checkpoint
    from maavt_fast.train.run import run_eval

    ckpt = read_checkpoint(args.checkpoint)
    if is_official(ckpt):
        cfg = official_config(args, overrides, ckpt, args.checkpoint)
    else:
        fallback = None if args.preset or args.config else checkpoint_config(ckpt, args.checkpoint)
        cfg = resolve_config(args, overrides, fallback)
    out = args.out or str(default_eval_dir(args.checkpoint, args.split))
    rep = run_eval(cfg, args.checkpoint, args.split, out, n_attention=args.attention)
    for name, path in rep.paths.items():
        print(f"  {name:<14} {path}")
    return 0


def default_eval_dir(checkpoint: str | Path, split: str) -> Path:
    """`<run>/eval_<split>` for a checkpoint in a run's `checkpoints/` folder, else `eval_<split>` beside the file."""
    path = Path(checkpoint).resolve()
    return (path.parent.parent if path.parent.name == "checkpoints" else path.parent) / f"eval_{split}"


def cmd_synth(args, overrides) -> int:
    from maavt_fast.data import synthesize

    _no_overrides("synth", overrides)
    root = synthesize(args.out, num_classes=args.classes, clips_per_class=args.clips_per_class, seed=args.seed,
                      test_fraction=args.test_fraction, image_size=args.image_size, show_progress=True)
    print(f"synthetic dataset ({args.classes} classes x {args.clips_per_class} clips) written to {root}; "
          f"train on it with: maavt train --preset synthetic --data.root {root}")
    return 0


def cmd_prepare(args, overrides) -> int:
    from maavt_fast.data import prepare_videos

    _no_overrides("prepare", overrides)
    summary = prepare_videos(args.videos, args.out, workers=args.workers, audio_only=args.audio_only,
                             show_progress=True)
    print(summary)
    return 1 if summary.failed else 0


def official_config(args, overrides, ckpt: dict, path: str) -> Config:
    """The model read from an official checkpoint; the rest from --preset/--config (or the file's dataset)."""
    from maavt_fast.train.official_config import config_for_official

    base = resolve_config(args, {}) if args.preset or args.config else None
    cfg, lines = config_for_official(ckpt, path, base, overrides)
    print("\n".join(lines), flush=True)
    return cfg


def cmd_convert(args, overrides) -> int:
    from maavt_fast.train.checkpoint import convert, read_official

    official = read_official(args.official)
    cfg = official_config(args, overrides, official, args.official)
    path = convert(official, args.official, args.out, cfg)
    print(f"converted {args.official} -> {path} (weights only; use with maavt eval --checkpoint {path})")
    return 0


BENCHMARKS = ("ops", "e2e", "data")


def benchmarks_dir() -> Path:
    """`benchmarks/` of the source checkout this package was installed from (editable install)."""
    return Path(__file__).resolve().parent.parent / "benchmarks"


def cmd_bench(args, _overrides) -> int:
    """`python -m benchmarks.NAME ARGS` with the checkout on PYTHONPATH (relative paths stay the caller's)."""
    path = benchmarks_dir() / f"{args.name}.py"
    if not path.is_file():
        raise CliError(f"benchmark script {path} not found: the benchmarks live in the source checkout, not in the "
                       "installed package; run from a clone of the repository (pip install -e .)")
    root = str(path.parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", f"benchmarks.{args.name}", *args.bench_args], env=env).returncode


def _no_overrides(cmd: str, overrides: dict[str, str]) -> None:
    if overrides:
        raise CliError(f"`maavt {cmd}` takes no config overrides; got {', '.join('--' + k for k in overrides)}")


# ----------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    fields_help = "config overrides (any number, --section.field VALUE or --section.field=VALUE):\n" + \
        "\n".join(config_options_help())
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="maavt", description="MA-AVT: train, evaluate and benchmark audio-visual "
                                     "parameter-efficient transformers (a frozen ViT with learnable tokens).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", formatter_class=fmt, epilog=fields_help,
                       help="synthesize data, train a small model, evaluate, print where the report is",
                       description="Writes a synthetic audio-visual dataset, trains the `synthetic` preset "
                                   "(random-init ViT-tiny) on it, evaluates on held-out clips and writes the report.")
    p.add_argument("--out", default="demo_out", help="output folder (data/, run/ and the report)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train")
    p.add_argument("--classes", type=int, default=8, help="number of synthetic classes")
    p.add_argument("--clips-per-class", type=int, default=None,
                   help="synthetic clips per class (default: the demo's size, see train/demo.py)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", formatter_class=fmt, epilog=fields_help, help="train (single process or torchrun)",
                       description="Train MA-AVT. Multi-GPU: torchrun --nproc_per_node=N -m maavt_fast train ...")
    _add_config_args(p)
    p.add_argument("--resume", metavar="CKPT|auto", help="continue a run exactly from a checkpoint; `auto`: "
                   "train.out_dir/checkpoints/latest.pt if it exists")
    p.add_argument("--test-split", default="test", choices=("test", "val"),
                   help="split the best checkpoint is evaluated on after training")
    p.add_argument("--no-test", action="store_true", help="skip the evaluation after training")
    p.add_argument("--overwrite", action="store_true", help="start a fresh run even if train.out_dir holds one "
                   "(its checkpoints and log are deleted); without it such a run is refused")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", formatter_class=fmt, epilog=fields_help, help="accuracy report of a checkpoint",
                       description="Evaluate a checkpoint (ours, or an official model_best.pth.tar: its model is "
                                   "read from the file): overall and per-class accuracy, confusion matrix (CSV, "
                                   "PNG), attention maps.")
    p.add_argument("--checkpoint", required=True, help="our .pt checkpoint or an official .pth.tar")
    _add_config_args(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate")
    p.add_argument("--out", help="report folder (default: <run>/eval_<split> for a run's checkpoint, else "
                   "eval_<split> beside the checkpoint file)")
    p.add_argument("--attention", type=int, default=8, help="number of attention-map examples in the HTML index")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("synth", help="write a synthetic dataset (VGGSound layout: JPEG frames, 16 kHz WAV, csv)")
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument("--classes", type=int, default=8, help="number of classes (1..64)")
    p.add_argument("--clips-per-class", type=int, default=50, help="clips per class")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of each class's clips in test")
    p.add_argument("--image-size", type=int, default=128, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="raw videos -> the official layout (1-fps JPEG frames + 16 kHz WAV)")
    p.add_argument("--videos", required=True, help="folder of .mp4/.webm/.mkv files (searched recursively)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--audio-only", action="store_true", help="only extract the WAV (raw-video decode mode)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("convert", formatter_class=fmt, epilog=fields_help,
                       help="official model_best.pth.tar -> our checkpoint format",
                       description="Read the model of an official checkpoint from the file (data and training "
                                   "settings from --preset/--config, else its dataset's preset) and save it in our "
                                   "(weights-only) format.")
    p.add_argument("--official", required=True, help="official checkpoint (.pth.tar)")
    p.add_argument("--out", required=True, help="output .pt path")
    _add_config_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="run a benchmark from the source checkout's benchmarks/ folder",
                       description="maavt bench {ops,e2e,data} [ARGS...]: ARGS go to the benchmark "
                                   "(see maavt bench NAME --help).")
    p.add_argument("name", choices=BENCHMARKS, help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=cmd_bench)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input (options, files, data): reported in one line, exit status 2."""
    from maavt_fast.data import DataError
    from maavt_fast.model import WeightsError
    from maavt_fast.train.checkpoint import CheckpointError

    return CliError, ConfigError, DataError, WeightsError, CheckpointError, MissingExtraError


def main(argv: list[str] | None = None) -> int:
    from maavt_fast.train.checkpoint import NonFiniteStateError
    from maavt_fast.train.distributed import RankTimeout
    from maavt_fast.train.interrupt import RunInterrupted
    from maavt_fast.train.loop import NonFiniteLossError

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._inductor")  # internal deprecations
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU compiles
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        args, rest = parser.parse_args(argv), []
    else:
        args, rest = parser.parse_known_args(argv)
    try:
        return args.func(args, parse_overrides(rest))
    except (NonFiniteLossError, NonFiniteStateError) as e:
        print(f"maavt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except RunInterrupted as e:
        print(f"maavt {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except RankTimeout as e:
        print(f"maavt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_RANK_TIMEOUT
    except _user_errors() as e:
        print(f"maavt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
