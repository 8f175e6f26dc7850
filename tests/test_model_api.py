"""Parameter counts and official checkpoints (docs/model.md), trainable state and input errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_batch, tiny_config
from maavt_fast.config import preset
from maavt_fast.model import MAAVT, WeightsError
from maavt_fast.model.official import load_official_checkpoint
from maavt_fast.model.reference import ReferenceMAAVT


def _trainable_count(model: MAAVT) -> int:
    return sum(p.numel() for _, p in model.named_trainable_parameters())


@pytest.mark.parametrize("name,expected", [("ave", 16_594_205), ("vggsound", 17_026_102), ("cremad", 16_560_391)])
def test_vit_base_trainable_counts_match_spec_minus_unused_temperatures(name, expected):
    with torch.device("meta"):
        model = MAAVT(preset(name).model)
    assert _trainable_count(model) == expected


@pytest.mark.parametrize("overrides,spec_count", [
    ({"model.contrastive": "final"}, 8_364_087),
    ({"model.contrastive": "none"}, 7_576_630),
    ({"model.lsa": "false"}, 9_939_010),
    ({"model.bg_token": "false"}, 17_023_809),
    ({"model.vit": "vit_small_patch16_224"}, 6_749_890),
])
def test_variant_counts_match_spec(overrides, spec_count):
    cfg = preset("vggsound", overrides)
    with torch.device("meta"):
        model = MAAVT(cfg.model)
    unused_temperatures = {"blockwise_sep": len(model.vit.blocks), "final": 1}.get(cfg.model.contrastive, 0)
    assert _trainable_count(model) == spec_count - unused_temperatures


def _official_state_dict(model: MAAVT) -> dict[str, torch.Tensor]:
    """A state dict laid out as the official code saves it (docs/model.md#official-checkpoints), written out by hand."""
    sd = {f"ViT.v.{k}": v for k, v in model.vit.state_dict().items()}
    dim = model.vit.embed_dim
    sd["ViT.v.head.weight"], sd["ViT.v.head.bias"] = torch.randn(21, dim), torch.randn(21)
    for ours, theirs in (("audio", "audio"), ("visual", "visual"), ("shared", "shared")):
        sd[f"{theirs}_tokens"] = getattr(model.tokens, ours).detach()
        lsa = model.tokens.lsa[ours]
        for part in ("qkv", "proj"):
            sd[f"{theirs}_attn.{part}.weight"] = getattr(lsa, part).weight.detach()
            sd[f"{theirs}_attn.{part}.bias"] = getattr(lsa, part).bias.detach()
    sd["bg_cls_token"] = model.bg_cls_token.detach()
    for ours, theirs in (("audio_proj", "audio_proj"), ("visual_proj", "vis_proj")):
        head = getattr(model, ours)
        for i in range(head.weight.shape[0]):
            sd[f"{theirs}.{i}.weight"], sd[f"{theirs}.{i}.bias"] = head.weight[i].detach(), head.bias[i].detach()
            sd[f"logit_scale.{i}"] = torch.tensor(2.66)
    for head in ("fg_class", "bg_class"):
        sd[f"{head}.weight"], sd[f"{head}.bias"] = getattr(model, head).weight.detach(), getattr(model, head).bias.detach()
    return {f"module.{k}": v.clone() for k, v in sd.items()}


def _save_official(model: MAAVT, path) -> None:
    """As the release saves it, numpy scalars in `best_acc`/`history` included (they must load data-only)."""
    torch.save({"epoch": 3, "arch": "MA_AVT", "state_dict": _official_state_dict(model),
                "best_acc": np.float64(0.5), "optimizer": {}, "scheduler": {"step_size": 15},
                "history": {"val_acc": [np.float32(0.25), np.float64(0.5)], "conf": np.eye(2)}}, path)


def test_official_checkpoint_round_trip_reproduces_reference(tmp_path):
    cfg = tiny_config()
    source = ReferenceMAAVT(cfg.model)
    path = tmp_path / "model_best.pth.tar"
    _save_official(source, path)
    target = MAAVT(cfg.model)
    load_official_checkpoint(path, target)
    batch = random_batch(3, 1, cfg.model.img_size, cfg.model.num_classes)
    out_t, out_s = target(*batch, return_attn=True), source(*batch, return_attn=True)
    for name in ("fg_logits", "bg_logits", "attn", "loss"):
        torch.testing.assert_close(getattr(out_t, name), getattr(out_s, name), atol=1e-5, rtol=0)


def test_official_checkpoint_with_other_shapes_is_rejected_by_name(tmp_path):
    path = tmp_path / "model_best.pth.tar"
    _save_official(MAAVT(tiny_config(model__num_classes="7").model), path)
    with pytest.raises(WeightsError, match="fg_class.weight"):
        load_official_checkpoint(path, MAAVT(tiny_config().model))


def test_official_checkpoint_without_a_state_dict_of_tensors_is_rejected_by_name(tmp_path):
    from maavt_fast.train.checkpoint import load_weights, read_checkpoint

    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 1, "state_dict": None}, path)
    with pytest.raises(WeightsError, match="model_best.pth.tar does not hold a state dict of tensors"):
        load_weights(read_checkpoint(path), MAAVT(tiny_config().model), path)


def test_trainable_state_round_trip_and_errors():
    cfg = tiny_config()
    a, b = MAAVT(cfg.model), MAAVT(cfg.model)
    b.load_trainable_state_dict(a.trainable_state_dict())
    for (k, p), (_, q) in zip(a.named_trainable_parameters(), b.named_trainable_parameters()):
        assert torch.equal(p, q), k
    sd = a.trainable_state_dict()
    sd.pop("tokens.shared")
    with pytest.raises(WeightsError, match="tokens.shared"):
        b.load_trainable_state_dict(sd)


def test_modality_parameters_are_each_modalitys_tokens_lsa_and_heads():
    model = MAAVT(tiny_config().model)
    groups = model.modality_parameters()
    names = {id(p): k for k, p in model.named_parameters()}
    audio = sorted(names[id(p)] for p in groups["audio"])
    assert audio == ["audio_proj.bias", "audio_proj.weight", "tokens.audio", "tokens.lsa.audio.proj.bias",
                     "tokens.lsa.audio.proj.weight", "tokens.lsa.audio.qkv.bias", "tokens.lsa.audio.qkv.weight"]
    assert all(names[id(p)].replace("visual", "audio") in audio for p in groups["visual"])


def test_modality_logits_use_the_right_classifier_halves():
    model = MAAVT(tiny_config().model)
    audio, image, label = random_batch(2, 1, 32, 5)
    out = model(audio, image, label)
    total = out.modality_logits[0] + out.modality_logits[1]
    torch.testing.assert_close(total, out.fg_logits, atol=1e-5, rtol=0)
    with torch.no_grad():
        model.fg_class.weight[:, :192] = 0  # zero the visual half: the visual logits must become the bias half
    out = model(audio, image, label)
    torch.testing.assert_close(out.modality_logits[1], model.fg_class.bias.expand(2, -1) / 2)


@pytest.mark.parametrize("audio_shape,image_shape,label_shape,match", [
    ((2, 1, 32, 30), (2, 1, 3, 32, 32), (2, 1), "audio must be"),
    ((2, 1, 32, 32), (2, 1, 1, 32, 32), (2, 1), "image must be"),
    ((2, 1, 32, 32), (3, 1, 3, 32, 32), (2, 1), "image must be"),
    ((2, 1, 32, 32), (2, 1, 3, 32, 32), (3,), "label must hold"),
])
def test_bad_input_shapes_are_named(audio_shape, image_shape, label_shape, match):
    model = MAAVT(tiny_config().model)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(audio_shape), torch.randn(image_shape), torch.zeros(label_shape, dtype=torch.long))


def test_older_lsa_key_names_still_load():
    """Checkpoints written before the LSA keys were renamed (`tokens.<group>_attn.*`, now `tokens.lsa.<group>.*`)."""
    cfg = tiny_config()
    source, target = MAAVT(cfg.model), MAAVT(cfg.model)
    old = {k.replace("tokens.lsa.audio.", "tokens.audio_attn.").replace("tokens.lsa.visual.", "tokens.visual_attn.")
           .replace("tokens.lsa.shared.", "tokens.shared_attn."): v for k, v in source.trainable_state_dict().items()}
    assert "tokens.audio_attn.qkv.weight" in old and not any(".lsa." in k for k in old)
    target.load_trainable_state_dict(old)
    for (k, p), (_, q) in zip(source.named_trainable_parameters(), target.named_trainable_parameters()):
        assert torch.equal(p, q), k
    full = MAAVT(cfg.model)
    full.load_state_dict({k.replace("tokens.lsa.shared.", "tokens.shared_attn."): v
                          for k, v in source.state_dict().items()})
    assert torch.equal(full.tokens.lsa["shared"].qkv.weight, source.tokens.lsa["shared"].qkv.weight)
