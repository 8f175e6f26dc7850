"""Runs that never lose work, at the command line: the run folder, up-front checks, one-line errors.

Each test runs `maavt ...` (in-process through `cli.main`, or as a subprocess where a signal or another
working directory is involved) on the tiny preset and checks the exit status, the stderr line and the
files on disk.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maavt_fast import cli
from maavt_fast.data import DataError, synthesize
from maavt_fast.train.checkpoint import read_checkpoint
from maavt_fast.train.run_folder import RunFolder

FAST = ["--data.num_workers", "0", "--train.precision", "fp32", "--no-test"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """A small synthetic dataset (4 classes x 12 clips, 64-px frames) shared by this module's tests; read-only."""
    return synthesize(tmp_path_factory.mktemp("synth4"), num_classes=4, clips_per_class=12, seed=0, image_size=64)


def train_args(root, out, *extra):
    return ["train", "--preset", "tiny", "--data.root", str(root), "--train.out_dir", str(out), *FAST,
            "--train.max_steps", "2", *extra]


def run_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder):
    """{relative path: bytes} of every file under `folder` but the lock."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A finished 2-step run (never modified by the tests: they copy it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(train_args(synth_root, out)) == 0
    return out


def copy_run(trained, tmp_path):
    """A copy of the run in tmp_path/run whose saved config names the copy as its out_dir (a moved run)."""
    out = shutil.copytree(trained, tmp_path / "run")
    config = json.loads((out / "config.json").read_text())
    config["train"]["out_dir"] = str(out)
    (out / "config.json").write_text(json.dumps(config))
    return out


# --------------------------------------------------------------------------------------- the run folder

def test_fresh_run_over_an_existing_run_is_refused_unless_overwrite(trained, synth_root, tmp_path, capsys):
    out = copy_run(trained, tmp_path)
    before = snapshot(out)
    code, _, err = run_main(train_args(synth_root, out), capsys)
    line = one_line_error(err)
    assert code == 2 and str(out) in line and "--resume auto" in line and "--overwrite" in line
    assert snapshot(out) == before
    code, out_text, _ = run_main(train_args(synth_root, out, "--overwrite", "--train.max_steps", "1"), capsys)
    assert code == 0 and "--overwrite: removed" in out_text
    assert read_checkpoint(out / "checkpoints" / "latest.pt")["loop"]["step"] == 1


def test_a_locked_run_folder_is_refused_and_a_dead_owners_lock_taken_over(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolder(out):  # another training holds the folder
        code, _, err = run_main(train_args(synth_root, out), capsys)
    assert code == 2 and "is in use by a running training" in one_line_error(err) and f"pid {os.getpid()}" in err
    assert not (out / "checkpoints").exists()
    (out / ".lock").write_text("host elsewhere pid 999999")  # a holder killed without releasing it
    code, text, _ = run_main(train_args(synth_root, out), capsys)
    assert code == 0 and "took over the lock" in text and "pid 999999" in text
    assert (out / ".lock").read_text() == ""  # released at the end


def test_a_refused_resume_changes_nothing_and_its_advice_works_from_another_cwd(trained, tmp_path, capsys,
                                                                                 monkeypatch):
    out = copy_run(trained, tmp_path)
    before = snapshot(out)
    config = out / "config.json"
    code, _, err = run_main(["train", "--config", config, "--resume", "auto", "--train.lr", "0.01"], capsys)
    assert code == 2 and "train.lr" in one_line_error(err) and "--config <run>/config.json" in err
    assert snapshot(out) == before
    # the advice: the saved config (absolute paths) resumes the run from any working directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, text, _ = run_main(["train", "--config", config, "--resume", "auto", "--train.max_steps", "3"], capsys)
    assert code == 0 and f"resumed from {out / 'checkpoints' / 'latest.pt'} at step 2" in text
    assert read_checkpoint(out / "checkpoints" / "latest.pt")["loop"]["step"] == 3
    assert not any(elsewhere.iterdir())


def test_nonfinite_weights_are_never_saved(trained, synth_root, tmp_path, capsys, monkeypatch):
    out = copy_run(trained, tmp_path)
    latest = out / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    adam_step = torch.optim.Adam.step

    def diverging_step(self, *a, **k):  # an update that leaves NaN weights behind a still finite loss
        result = adam_step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", diverging_step)
    code, _, err = run_main(train_args(synth_root, out, "--resume", "auto", "--train.max_steps", "3",
                                       "--train.ckpt_every", "1"), capsys)
    assert code == 3 and "hold NaN or inf" in one_line_error(err) and f"not written over {latest}" in err
    assert latest.read_bytes() == before


def test_a_resume_cleans_temp_files_follows_the_umask_and_logs_each_step_once(trained, synth_root, tmp_path,
                                                                                capsys):
    out = copy_run(trained, tmp_path)
    stale = out / "checkpoints" / ".latest.pt.abc123.tmp"  # a write interrupted by a kill
    stale.write_bytes(b"torn")
    log = out / "log.jsonl"
    log.write_text(log.read_text() + json.dumps({"event": "train", "step": 3, "loss": 9.0}) + "\n")  # after the ckpt
    old = os.umask(0o027)
    try:
        code, text, _ = run_main(train_args(synth_root, out, "--resume", "auto", "--train.max_steps", "3"), capsys)
    finally:
        os.umask(old)
    assert code == 0 and "removed 1 temp file(s)" in text and not stale.exists()
    assert (out / "checkpoints" / "latest.pt").stat().st_mode & 0o777 == 0o640
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step"] for r in records if r["event"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 3 and 9.0 not in [r.get("loss") for r in records]


def test_a_full_disk_keeps_the_previous_checkpoint(trained, synth_root, tmp_path, capsys, monkeypatch):
    out = copy_run(trained, tmp_path)
    before = snapshot(out / "checkpoints")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, _, err = run_main(train_args(synth_root, out, "--resume", "auto", "--train.max_steps", "3"), capsys)
    line = one_line_error(err)
    assert code == 2 and f"no space left writing {out / 'checkpoints'}" in line
    assert "the previous checkpoint is intact" in line
    assert snapshot(out / "checkpoints") == before  # no temp file left either


# --------------------------------------------------------------------------------------- up-front checks

def test_data_classes_are_checked_before_step_one(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_main(train_args(synth_root, out, "--model.num_classes", "3"), capsys)
    assert code == 2 and "the data has 4 classes" in one_line_error(err) and "--model.num_classes 4" in err
    assert not (out / "checkpoints").exists() and not (out / "config.json").exists()
    # not set by the user on a synthetic set: the data's count is used, and said
    code, text, _ = run_main(train_args(synth_root, out, "--train.max_steps", "1"), capsys)
    assert code == 0 and "model.num_classes: 4, the classes of the data (was 5)" in text
    assert read_checkpoint(out / "checkpoints" / "latest.pt")["config"]["model"]["num_classes"] == 4


def test_an_empty_test_split_and_missing_media_are_refused_up_front(tmp_path, capsys):
    root = tmp_path / "data"
    assert run_main(["synth", "--out", root, "--classes", "2", "--clips-per-class", "3", "--test-fraction", "0",
                     "--image-size", "32"], capsys)[0] == 0
    args = train_args(root, tmp_path / "run")
    args.remove("--no-test")
    code, _, err = run_main(args, capsys)
    assert code == 2 and "the test split is empty or missing" in one_line_error(err)
    assert not (tmp_path / "run" / "checkpoints").exists()
    shutil.rmtree(root / "frames")
    code, _, err = run_main(train_args(root, tmp_path / "run"), capsys)
    assert code == 2 and f"{root}: no media found" in one_line_error(err)


def test_a_data_error_in_a_decode_worker_is_the_same_one_line_error(synth_root, tmp_path, capsys):
    root = shutil.copytree(synth_root, tmp_path / "data")
    for jpg in (root / "frames" / "train").rglob("*.jpg"):
        jpg.write_bytes(b"not a jpeg")
    args = train_args(root, tmp_path / "run", "--data.num_workers", "2")
    code, _, err = run_main(args, capsys)
    assert code == 2 and str(root) in one_line_error(err) and "DataLoader worker" not in err
    e = pickle.loads(pickle.dumps(DataError("x.jpg", "corrupt")))
    assert type(e) is DataError and (e.path, e.problem, str(e)) == ("x.jpg", "corrupt", "x.jpg: corrupt")


def test_a_non_utf8_manifest_names_the_file_and_line(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"split,video_or_frames,audio,label\ntrain,a,a.wav,x\ntrain,b\xff,b.wav,y\n")
    code, _, err = run_main(train_args(manifest, tmp_path / "run", "--data.dataset", "csv"), capsys)
    assert code == 2 and f"{manifest}: line 3 is not UTF-8" in one_line_error(err)


# --------------------------------------------------------------------------------------- bad options

@pytest.mark.parametrize("option,value,match", [
    ("--train.lr", "nan", "train.lr needs a finite number"),
    ("--train.lr", "1e39", "train.lr must be > 0 and fit a float32"),
    ("--train.weight_decay", "inf", "train.weight_decay needs a finite number"),
    ("--model.temperature", "-inf", "model.temperature needs a finite number"),
    ("--data.image_std", "0.2,nan,0.2", "data.image_std needs a finite number"),
])
def test_nonfinite_float_options_are_refused(synth_root, tmp_path, capsys, option, value, match):
    code, _, err = run_main(train_args(synth_root, tmp_path / "run", option, value), capsys)
    assert code == 2 and match in one_line_error(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,match", [
    ("train: [1, 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "needs a mapping of sections"),
    ("train:\n  nope: 1\n", "unknown key train.nope"),
])
def test_bad_config_files_name_the_file(tmp_path, capsys, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, _, err = run_main(["train", "--preset", "tiny", "--config", path], capsys)
    assert code == 2 and f"--config {path}: " in one_line_error(err) and match in err
    bad_json = tmp_path / "c.json"
    bad_json.write_text("{'train': 1}")
    code, _, err = run_main(["train", "--config", bad_json], capsys)
    assert code == 2 and f"--config {bad_json}: not valid JSON" in one_line_error(err)


def test_an_unwritable_out_dir_and_a_missing_cuda_are_named(synth_root, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_main(train_args(synth_root, blocker / "run"), capsys)
    assert code == 2 and f"train.out_dir {blocker / 'run'} is not writable" in one_line_error(err)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main(train_args(synth_root, tmp_path / "run", "--train.device", "cuda"), capsys)
    assert code == 2 and "train.device=cuda but torch sees no CUDA device" in one_line_error(err)


@pytest.mark.parametrize("args,match", [
    (["--classes", "0"], "--classes"), (["--test-fraction", "1.5"], "--test-fraction"),
    (["--clips-per-class", "0"], "--clips-per-class"), (["--image-size", "4"], "--image-size"),
])
def test_bad_synth_arguments_are_one_line_errors(tmp_path, capsys, args, match):
    code, _, err = run_main(["synth", "--out", tmp_path / "d", *args], capsys)
    assert code == 2 and match in one_line_error(err) and not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------- config layering

def test_config_layers_preset_then_yaml_file_then_options(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("train:\n  lr: 0.005\n  epochs: 3\nmodel:\n  depth: 1\n")
    args = cli.build_parser().parse_args(["train", "--preset", "tiny", "--config", str(path)])
    cfg = cli.resolve_config(args, {"train.epochs": "7"})
    assert cfg.train.lr == 0.005 and cfg.model.depth == 1 and cfg.train.epochs == 7  # file, then option
    assert cfg.model.img_size == 32 and cfg.train.batch_size == 4  # the rest from the preset, not the defaults


def test_the_dist_timeout_reaches_the_process_group(monkeypatch):
    import torch.distributed as dist

    from maavt_fast.train.distributed import process_group

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
    with pytest.raises(RuntimeError, match="stop"), process_group("cpu", timeout_s=7):
        raise RuntimeError("stop")
    assert seen["timeout"].total_seconds() == 7


def _stalling_rank(rank: int, port: int, out_dir: str) -> None:
    """Rank 0 waits in an all-reduce that rank 1 never joins (it sleeps past the 3 s timeout)."""
    import time

    from maavt_fast.train.distributed import RankTimeout, process_group

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        with process_group("cpu", timeout_s=3):
            if rank == 0:
                torch.distributed.all_reduce(torch.ones(1))
            else:
                time.sleep(8)
    except RankTimeout as err:
        (Path(out_dir) / f"rank{rank}.timeout").write_text(str(err))
    except RuntimeError as err:  # rank 1 finds the group gone when it comes back: not what is tested
        (Path(out_dir) / f"rank{rank}.other").write_text(str(err))


def test_a_hung_rank_ends_the_wait_after_dist_timeout_s_with_a_message_naming_the_rank(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_stalling_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    message = (tmp_path / "rank0.timeout").read_text()
    assert message.startswith("rank 0 of 2 waited more than train.dist_timeout_s=3 s in a collective"), message


def test_a_rank_timeout_is_one_line_and_exit_4(monkeypatch, capsys):
    from maavt_fast.train.distributed import RankTimeout

    def hung(args, overrides):
        raise RankTimeout("rank 1 of 2 waited more than train.dist_timeout_s=300 s in a collective")

    monkeypatch.setattr(cli, "cmd_train", hung)
    assert cli.main(["train", "--preset", "tiny"]) == cli.EXIT_RANK_TIMEOUT == 4
    err = capsys.readouterr().err.strip()
    assert err == "maavt train: error: rank 1 of 2 waited more than train.dist_timeout_s=300 s in a collective"


def test_importing_the_library_has_no_plotting_side_effect():
    code = ("import sys, maavt_fast.cli, maavt_fast.train.run, maavt_fast.data.dali, maavt_fast.data.factory; "
            "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_ctrl_c_is_a_stop_request_with_exit_130_and_a_second_one_interrupts():
    import signal

    from maavt_fast.train.interrupt import RunInterrupted, StopSignals

    with StopSignals() as stop:
        assert stop.requested(1) == 0
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested(2) == signal.SIGINT  # recorded, not raised
        with pytest.raises(KeyboardInterrupt):  # the second one acts as usual
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert RunInterrupted(signal.SIGINT, 2, "r/checkpoints/latest.pt").exit_code == 130


# --------------------------------------------------------------------------------------- class names

def _csv_rows(root):
    import csv

    return list(csv.reader((root / "vggsound.csv").open()))


def _write_rows(root, rows):
    import csv

    with (root / "vggsound.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_class_names_travel_with_the_run_and_map_the_data_by_name(trained, synth_root, tmp_path, capsys):
    best = trained / "checkpoints" / "best.pt"
    names = list(read_checkpoint(best)["config"]["data"]["classes"])
    assert len(names) == 4 and names == sorted(names)

    def scores(root, name):
        code, _, err = run_main(["eval", "--checkpoint", best, "--data.root", root, "--out", tmp_path / name,
                                 "--attention", "0", "--data.num_workers", "0"], capsys)
        assert code == 0, err
        return json.loads((tmp_path / name / "metrics_test.json").read_text())

    want = scores(synth_root, "original")
    # a copy without the train clips of the first class sorts its train classes differently; a test-only
    # copy has none at all: both still evaluate each test clip against its own class
    partial = shutil.copytree(synth_root, tmp_path / "partial")
    _write_rows(partial, [r for r in _csv_rows(partial) if not (r[2] == names[0] and r[3] == "train")])
    test_only = shutil.copytree(synth_root, tmp_path / "test_only")
    for media in ("frames", "audio"):
        shutil.rmtree(test_only / media / "train")
    for root, name in ((partial, "partial"), (test_only, "test_only")):
        got = scores(root, name)
        assert (got["total_acc"], got["loss"], got["per_class_acc"]) == \
            (want["total_acc"], want["loss"], want["per_class_acc"]), name
    # a class the checkpoint does not know is refused, named
    yid, start = next(r for r in _csv_rows(partial) if r[3] == "train")[:2]
    name = f"{yid}_{int(start):06d}"
    shutil.copytree(partial / "frames" / "train" / "Image-01-FPS" / f"{name}.mp4",
                    partial / "frames" / "train" / "Image-01-FPS" / "zebra_000000.mp4")
    shutil.copy(partial / "audio" / "train" / f"{name}.wav", partial / "audio" / "train" / "zebra_000000.wav")
    _write_rows(partial, _csv_rows(partial) + [["zebra", "0", "zebra", "train"]])
    code, _, err = run_main(["eval", "--checkpoint", best, "--data.root", partial, "--out", tmp_path / "z",
                             "--attention", "0"], capsys)
    assert code == 2 and "'zebra' are not among the 4 classes" in one_line_error(err)


def test_numeric_class_names_sort_numerically():
    from maavt_fast.config import DataConfig
    from maavt_fast.data.manifests import class_order

    assert class_order({"10", "2", "0", "1", "cat"}, DataConfig()) == ["0", "1", "2", "10", "cat"]
    assert class_order({"b"}, DataConfig(classes=("b", "a"))) == ["b", "a"]


@pytest.mark.parametrize("option,value,match", [
    ("--model.depth", "13", "model.depth=13 exceeds the 12 blocks of vit_tiny_patch16_224"),
    ("--model.vit", "resnet18", "model.vit='resnet18' is a ResNet, not a timm VisionTransformer"),
    ("--model.vit", "vit_small_patch32_224", "must be a timm VisionTransformer with patch size 16"),
])
def test_a_vit_that_cannot_work_is_refused_before_step_one(synth_root, tmp_path, capsys, option, value, match):
    code, _, err = run_main(train_args(synth_root, tmp_path / "run", option, value), capsys)
    assert code == 2 and match in one_line_error(err)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_repeated_rows_are_dropped_with_a_warning_and_conflicting_ones_refused(synth_root, tmp_path, capsys,
                                                                                caplog):
    from maavt_fast.config import DataConfig
    from maavt_fast.data.manifests import build_index

    root = shutil.copytree(synth_root, tmp_path / "data")
    rows = _csv_rows(root)
    train_row = next(r for r in rows if r[3] == "train")
    _write_rows(root, rows + [train_row])
    cfg = DataConfig(root=str(root), val_fraction=0.5)
    train, val = build_index(cfg, "train", 0), build_index(cfg, "val", 0)
    assert len(train.clips) + len(val.clips) == sum(r[3] == "train" for r in rows)  # the repeat is gone
    assert not {c.audio for c in train.clips} & {c.audio for c in val.clips}
    assert f"dropped 1 repeated manifest row(s) (same clip, label and split); first: {root / 'vggsound.csv'}" \
        in caplog.text
    other = next(r[2] for r in rows if r[2] != train_row[2])
    _write_rows(root, rows + [[train_row[0], train_row[1], other, "train"]])
    code, _, err = run_main(train_args(root, tmp_path / "run"), capsys)
    assert code == 2 and f"is listed as {other!r} (train) here and as {train_row[2]!r}" in one_line_error(err)


def test_eval_reports_go_next_to_the_run_or_beside_the_file(tmp_path):
    run_ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    assert cli.default_eval_dir(run_ckpt, "test") == tmp_path / "run" / "eval_test"
    assert cli.default_eval_dir(tmp_path / "model_best.pth.tar", "val") == tmp_path / "eval_val"


def test_skipped_bad_samples_are_logged_and_summed_up(synth_root, tmp_path, capsys):
    root = shutil.copytree(synth_root, tmp_path / "data")
    broken = sorted((root / "frames" / "train").rglob("000001.jpg"))[:6]
    for jpg in broken:
        jpg.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    code, text, _ = run_main(train_args(root, out, "--data.skip_bad", "true", "--train.max_steps", "100"), capsys)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r["event"] == "skipped"]
    end = next(r for r in records if r["event"] == "end")
    assert code == 0 and skipped and sum(r["samples"] for r in skipped) == sum(end["skipped"].values()) > 0
    assert end["skipped"]["train"] + end["skipped"]["val"] == len(broken)  # one epoch: each bad clip once
    assert f"{end['skipped']['train']} bad train samples skipped" in text
