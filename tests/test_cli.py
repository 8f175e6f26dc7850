"""The `maavt` command line: help, option errors, overrides, eval/convert/synth/bench commands."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import torch

from conftest import tiny_config
from maavt_fast import cli
from maavt_fast.config import Config
from maavt_fast.data import synthesize
from maavt_fast.model import MAAVT
from maavt_fast.train.checkpoint import load_weights, read_checkpoint, save_checkpoint
from test_model_api import _save_official


def _all_config_keys(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _all_config_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("syn"), num_classes=5, clips_per_class=5, seed=0, image_size=32)


def run_main(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in _all_config_keys():
        assert f"--{key} " in text, key
    assert "peak learning rate" in text and "(default 0.0001)" in text
    assert "--train.schedule constant|cosine|step" in text  # allowed values, as validate() names them
    assert "--model.contrastive blockwise_sep|blockwise_cmn|final|none" in text
    assert "keep only the first `depth` blocks" in text  # meanings from the config's field comments
    for opt in ("--preset", "--config", "--resume", "--no-test"):
        assert opt in text
    for command in ("demo", "eval", "synth", "prepare", "convert"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "--out" in capsys.readouterr().out


def test_python_dash_m_entry_point_lists_commands():
    out = subprocess.run([sys.executable, "-m", "maavt_fast", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("demo", "train", "eval", "synth", "prepare", "convert", "bench"):
        assert command in out


def test_bad_options_name_the_option_and_the_allowed_values(capsys, tmp_path):
    code, _, err = run_main(["train", "--preset", "tiny", "--train.batch_sise", "3"], capsys)
    assert code == 2 and "'batch_sise'" in err and "batch_size" in err  # names the key and lists the allowed ones
    code, _, err = run_main(["train", "--preset", "tiny", "--train.schedule", "linear"], capsys)
    assert code == 2 and "train.schedule='linear' is not one of constant, cosine, step" in err
    code, _, err = run_main(["train", "--preset", "tiny", "--train.lr", "fast"], capsys)
    assert code == 2 and "train.lr needs float" in err
    code, _, err = run_main(["train", "--preset", "tiny", "stray"], capsys)
    assert code == 2 and "unrecognized argument 'stray'" in err
    code, _, err = run_main(["train"], capsys)
    assert code == 2 and "give --preset (one of vggsound, cremad, ave, synthetic, tiny)" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--preset", "imagenet"])
    assert e.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err
    code, _, err = run_main(["eval", "--checkpoint", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and "missing.pt does not exist" in err


def test_parse_overrides_forms():
    assert cli.parse_overrides(["--train.lr", "1e-3", "--model.depth=4"]) == {"train.lr": "1e-3", "model.depth": "4"}
    with pytest.raises(cli.CliError, match="--train.lr needs a value"):
        cli.parse_overrides(["--train.lr"])
    with pytest.raises(cli.CliError, match="unrecognized argument '--verbose'"):
        cli.parse_overrides(["--verbose"])


def test_resolve_config_from_saved_json_with_overrides(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(train__lr="0.5").to_dict()))
    args = cli.build_parser().parse_args(["train", "--config", str(path)])
    cfg = cli.resolve_config(args, {"train.epochs": "7"})
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 7 and cfg.model == tiny_config().model


def test_eval_our_checkpoint_writes_the_report(capsys, tmp_path, data_root):
    cfg = tiny_config(data__root=str(data_root), data__num_workers="0", train__precision="fp32")
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", model=MAAVT(cfg.model), cfg=cfg)
    code, out, _ = run_main(["eval", "--checkpoint", str(path), "--attention", "2"], capsys)
    assert code == 0
    report = tmp_path / "run" / "eval_test"
    metrics = json.loads((report / "metrics_test.json").read_text())
    assert metrics["samples"] == 5 and len(metrics["per_class_acc"]) == cfg.model.num_classes
    assert Config.from_dict(json.loads((report / "config.json").read_text())) == cfg  # resolved config saved
    rows = (report / "confusion_test.csv").read_text().splitlines()
    assert len(rows) == 1 + cfg.model.num_classes
    assert sum(int(x) for row in rows[1:] for x in row.split(",")[1:]) == 5
    html = (report / "attention" / "index.html").read_text()
    assert html.count("<tr>") == 1 + 2 and (report / "attention" / "001.png").exists()
    assert (report / "confusion_test.png").stat().st_size > 0 and str(report) in out


def test_convert_then_eval_official_checkpoint(capsys, tmp_path, data_root):
    cfg = tiny_config(data__root=str(data_root), data__num_workers="0", train__precision="fp32")
    source = MAAVT(cfg.model)
    _save_official(source, tmp_path / "model_best.pth.tar")
    code, out, _ = run_main(["convert", "--official", str(tmp_path / "model_best.pth.tar"), "--out",
                             str(tmp_path / "ours.pt"), "--preset", "tiny"], capsys)
    assert code == 0 and "converted" in out
    converted = read_checkpoint(tmp_path / "ours.pt")
    own = dict(source.named_trainable_parameters())
    assert converted["optimizer"] is None and set(converted["model"]) == set(own)
    assert all(torch.equal(converted["model"][k], own[k].detach()) for k in own)
    # the frozen ViT came from the official file, not from a config: the converted model gives its outputs
    rebuilt = MAAVT(Config.from_dict(converted["config"]).model)
    load_weights(converted, rebuilt, tmp_path / "ours.pt")
    audio, image = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(audio, image).fg_logits, source(audio, image).fg_logits)
    # the official file evaluates directly (what the file does not record, LSA heads, from --preset)
    code, _, _ = run_main(["eval", "--checkpoint", str(tmp_path / "model_best.pth.tar"), "--preset", "tiny",
                           "--out", str(tmp_path / "official_eval"), "--attention", "0",
                           "--data.root", str(data_root), "--data.num_workers", "0"], capsys)
    assert code == 0
    # resuming from a weights-only checkpoint is refused with the reason
    code, _, err = run_main(["train", "--resume", str(tmp_path / "ours.pt"), "--data.root", str(data_root)], capsys)
    assert code == 2 and "cannot be resumed" in err


def test_synth_command(capsys, tmp_path):
    code, out, _ = run_main(["synth", "--out", str(tmp_path / "d"), "--classes", "2", "--clips-per-class", "2",
                             "--image-size", "32"], capsys)
    assert code == 0 and (tmp_path / "d" / "vggsound.csv").exists() and "--data.root" in out
    code, _, err = run_main(["synth", "--out", str(tmp_path / "d"), "--train.lr", "1"], capsys)
    assert code == 2 and "takes no config overrides" in err


def test_bench_runs_the_checkout_module_or_says_where_it_looked(capfd, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: tmp_path / "benchmarks")
    monkeypatch.chdir(tmp_path / "..")  # relative paths stay the caller's: the module runs from here
    assert cli.main(["bench", "ops", "--quick"]) == 2
    assert f"{tmp_path / 'benchmarks' / 'ops.py'} not found" in capfd.readouterr().err
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    (tmp_path / "benchmarks" / "ops.py").write_text(
        "import os, sys\nprint('ARGS', __name__, sys.argv[1:], os.getcwd())\nsys.exit(3)\n")
    assert cli.main(["bench", "ops", "--quick", "--n", "3"]) == 3
    assert f"ARGS __main__ ['--quick', '--n', '3'] {tmp_path.parent}" in capfd.readouterr().out


def test_nonfinite_loss_exits_nonzero_naming_the_step(capsys, tmp_path, data_root):
    code, _, err = run_main(["train", "--preset", "tiny", "--data.root", str(data_root), "--data.num_workers", "0",
                             "--train.out_dir", str(tmp_path / "run"), "--train.lr", "1e30", "--train.max_steps", "3",
                             "--train.precision", "fp32", "--no-test"], capsys)
    assert code == 3 and "the training loss is nan at step 2" in err


def test_prepare_reports_a_missing_videos_folder(capsys, tmp_path):
    code, _, err = run_main(["prepare", "--videos", str(tmp_path / "none"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "videos folder is missing" in err and str(tmp_path / "none") in err
    (tmp_path / "empty").mkdir()
    code, out, _ = run_main(["prepare", "--videos", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and "prepared 0, already done 0, failed 0" in out


def test_resume_auto_continues_the_run_in_out_dir(capsys, tmp_path, data_root):
    args = ["train", "--preset", "tiny", "--data.root", str(data_root), "--data.num_workers", "0", "--no-test",
            "--train.out_dir", str(tmp_path / "run"), "--train.precision", "fp32", "--resume", "auto"]
    code, out, _ = run_main([*args, "--train.max_steps", "2"], capsys)
    assert code == 0 and "resumed" not in out  # nothing to resume yet: a fresh run
    code, out, _ = run_main([*args, "--train.max_steps", "3"], capsys)
    assert code == 0 and f"resumed from {tmp_path / 'run' / 'checkpoints' / 'latest.pt'} at step 2" in out
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["loop"]["step"] == 3
