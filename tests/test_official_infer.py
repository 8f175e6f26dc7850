"""Official checkpoints by themselves: the model is read from the file (ViT, classes, tokens, heads, BG token);
`maavt convert` / `maavt eval` need no --preset or --model.* flags; files that fit no model are refused by key."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from maavt_fast import cli
from maavt_fast.config import ModelConfig
from maavt_fast.data import synthesize
from maavt_fast.model import MAAVT
from maavt_fast.model.official_infer import infer_official_model
from maavt_fast.train.checkpoint import load_weights, read_checkpoint
from maavt_fast.train.official_config import config_for_official


def _model_config(vit: str = "vit_tiny_patch16_224", depth: int | None = 2, **fields) -> ModelConfig:
    """A small model as the release would build it (8 LSA heads), 32x32 inputs, 5 classes."""
    base = dict(vit=vit, depth=depth, img_size=32, num_classes=5, proj_dim=16, n_audio_tokens=3, n_visual_tokens=2,
                n_shared_tokens=4)
    return ModelConfig(**(base | fields))


def _official_names(model: MAAVT) -> dict[str, torch.Tensor]:
    """`model`'s weights under the official names and layout (written out here, independently of the loader)."""
    groups = {"tokens.audio": "audio_tokens", "tokens.visual": "visual_tokens", "tokens.shared": "shared_tokens"}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("vit."):
            out["ViT.v." + key[4:]] = value
        elif key in groups:
            out[groups[key]] = value
        elif key.startswith("tokens.lsa."):  # tokens.lsa.<group>.qkv.weight -> <group>_attn.qkv.weight
            group, rest = key[len("tokens.lsa."):].split(".", 1)
            out[f"{group}_attn.{rest}"] = value
        elif key.startswith(("audio_proj.", "visual_proj.")):
            name, part = key.split(".")
            name = "vis_proj" if name == "visual_proj" else name
            if model.cfg.contrastive == "blockwise_sep":
                out.update({f"{name}.{i}.{part}": v for i, v in enumerate(value)})
            else:
                out[f"{name}.{part}"] = value[0]
        else:
            out[key] = value
    dim = model.vit.embed_dim
    out["ViT.v.head.weight"], out["ViT.v.head.bias"] = torch.randn(21, dim), torch.randn(21)
    out["logit_scale"] = torch.tensor(2.66)
    return {f"module.{k}": v.clone() for k, v in out.items()}


def _save(sd: dict[str, torch.Tensor], path) -> str:
    torch.save({"epoch": 3, "arch": "MA_AVT", "state_dict": sd, "best_acc": 0.5, "optimizer": {}}, path)
    return str(path)


def _official_file(tmp_path, cfg: ModelConfig, name="model_best.pth.tar") -> tuple[MAAVT, str]:
    source = MAAVT(cfg).eval()
    return source, _save(_official_names(source), tmp_path / name)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("syn"), num_classes=5, clips_per_class=4, seed=0, image_size=32)


def run_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("fields", [
    {},
    {"vit": "vit_small_patch16_224", "contrastive": "none", "bg_token": False, "proj_dim": 512},
    {"contrastive": "blockwise_cmn", "lsa": False, "proj_dim": 8},
    {"unimodal_tokens": False, "num_classes": 7, "n_audio_tokens": 5, "n_visual_tokens": 5},
    {"shared_tokens": False, "contrastive": "none", "img_size": 48, "n_shared_tokens": 5, "proj_dim": 512},
], ids=["tiny", "small-no-bg", "cmn-no-lsa", "shared-only", "unimodal-only-48px"])
def test_the_file_decides_the_model(fields, tmp_path):
    cfg = _model_config(**fields)  # fields the file cannot hold (of groups and heads that are off) at their defaults
    source = MAAVT(cfg)
    inferred, lines = config_for_official(_official_names(source), "x.pth.tar", None, {})
    assert inferred.model == cfg  # every field: read from the file, or the release's default it was built with
    assert "x.pth.tar: ViT-" in lines[0]


def test_final_and_blockwise_cmn_look_alike_and_the_config_chooses(tmp_path):
    sd = _official_names(MAAVT(_model_config(contrastive="final")))
    cfg, lines = config_for_official(sd, "x", None, {})
    assert cfg.model.contrastive == "blockwise_cmn" and "cannot tell blockwise_cmn from final" in "\n".join(lines)
    assert config_for_official(sd, "x", None, {"model.contrastive": "final"})[0].model.contrastive == "final"


def test_convert_and_eval_a_full_vit_tiny_without_model_flags(tmp_path, data_root, capsys, caplog):
    _, path = _official_file(tmp_path, _model_config(depth=None))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code, out, err = run_main(["convert", "--official", path, "--out", tmp_path / "ours.pt"], capsys)
        assert code == 0, err
        assert "ViT-Tiny (vit_tiny_patch16_224, width 192, 12 of 12 blocks), 32x32 input, 5 classes" in out
        assert "tokens audio/visual/shared 3/2/4, LSA with 8 heads" in out and "contrastive blockwise_sep" in out
        assert "BG token on" in out and "the vggsound preset's (no preset has 5 classes" in out
        code, out, err = run_main(["eval", "--checkpoint", path, "--data.root", data_root, "--data.num_workers", 0,
                                   "--attention", 0, "--out", tmp_path / "eval"], capsys)
        assert code == 0, err
        code, _, err = run_main(["eval", "--checkpoint", tmp_path / "ours.pt", "--data.root", data_root,
                                 "--data.num_workers", 0, "--attention", 0, "--out", tmp_path / "eval2"], capsys)
        assert code == 0, err
    assert "randomly initialised" not in caplog.text  # the files supply the ViT
    official = json.loads((tmp_path / "eval" / "metrics_test.json").read_text())
    converted = json.loads((tmp_path / "eval2" / "metrics_test.json").read_text())
    assert official["samples"] == converted["samples"] > 0
    assert official["total_acc"] == converted["total_acc"]


def test_convert_a_vit_small_keeps_its_outputs(tmp_path, capsys):
    source, path = _official_file(tmp_path, _model_config("vit_small_patch16_224", num_classes=6, bg_token=False))
    code, out, err = run_main(["convert", "--official", path, "--out", tmp_path / "ours.pt"], capsys)
    assert code == 0, err
    assert "ViT-Small (vit_small_patch16_224, width 384, 2 of 12 blocks)" in out and "the cremad preset's" in out
    ckpt = read_checkpoint(tmp_path / "ours.pt")
    cfg = cli.Config.from_dict(ckpt["config"])
    assert cfg.model.depth == 2 and cfg.data.dataset == "cremad" and not cfg.model.bg_token
    rebuilt = MAAVT(cfg.model)
    load_weights(ckpt, rebuilt, tmp_path / "ours.pt")
    audio, image = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(audio, image).fg_logits, source(audio, image).fg_logits)


def _edited(tmp_path, edit) -> str:
    sd = {k.removeprefix("module."): v for k, v in _official_names(MAAVT(_model_config())).items()}
    edit(sd)
    return _save(sd, tmp_path / "bad.pth.tar")


def _more_blocks(sd):
    for i in range(2, 13):
        sd.update({k.replace("blocks.1.", f"blocks.{i}."): v for k, v in list(sd.items()) if "blocks.1." in k})


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.update({"ViT.v.cls_token": torch.zeros(1, 1, 640)}),
     "ViT.v.cls_token has width 640; supported ViTs are 192 (ViT-Tiny), 384 (ViT-Small)"),
    (lambda sd: sd.update({"ViT.v.patch_embed.proj.weight": torch.zeros(192, 3, 14, 14)}),
     "ViT.v.patch_embed.proj.weight is (192, 3, 14, 14): patch 14; only patch-16"),
    (_more_blocks, "ViT.v.blocks.0..12: 13 blocks of width 192, but a ViT-Tiny has 12"),
    (lambda sd: sd.update({"shared_tokens": torch.zeros(4, 768)}),
     "shared_tokens is (4, 768) (width 768: a ViT-Base) but ViT.v.cls_token has width 192: a ViT-Tiny"),
    (lambda sd: sd.update({"fg_class.weight": torch.zeros(5, 768)}),
     "fg_class.weight is (5, 768) (width 384: a ViT-Small) but ViT.v.cls_token has width 192"),
    (lambda sd: sd.pop("visual_tokens"), "audio_tokens without visual_tokens"),
    (lambda sd: [sd.pop(f"audio_proj.1.{p}") for p in ("weight", "bias")], "audio_proj and vis_proj differ"),
    (lambda sd: sd.pop("ViT.v.cls_token"), "no ViT.v.cls_token (the ViT's class token: not an MA-AVT checkpoint?)"),
    (lambda sd: sd.update({"ViT.v.pos_embed": torch.zeros(1, 6, 192)}), "ViT.v.pos_embed is (1, 6, 192): not 1"),
], ids=["width", "patch", "blocks", "token-width", "head-width", "unpaired", "heads", "not-maavt", "pos"])
def test_a_file_that_fits_no_model_is_refused_in_its_own_key_names(edit, message, tmp_path, capsys):
    path = _edited(tmp_path, edit)
    code, _, err = run_main(["convert", "--official", path, "--out", tmp_path / "x.pt"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_an_override_that_contradicts_the_file_is_refused_by_key(tmp_path, capsys):
    _, path = _official_file(tmp_path, _model_config())
    code, _, err = run_main(["convert", "--official", path, "--out", tmp_path / "x.pt",
                             "--model.vit", "vit_base_patch16_224", "--model.num_classes", "9"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "ViT.v.cls_token has width 192: a ViT-Tiny, but model.vit='vit_base_patch16_224'" in err
    assert "fg_class.weight is (5, 384): 5 classes, but model.num_classes=9" in err


def test_inference_ignores_the_module_prefix_and_reads_the_heads(tmp_path):
    found = infer_official_model({"state_dict": _official_names(MAAVT(_model_config(proj_dim=24)))}, "f")
    assert found.fields["proj_dim"] == 24 and found.fields["contrastive"] == "blockwise_sep"
    assert found.evidence["proj_dim"] == "audio_proj.0.weight is (24, 192)"
