"""Typed config: presets carry the release's recipe, overrides are typed, bad keys/values are named."""
from __future__ import annotations

import pytest

from maavt_fast.config import PRESETS, Config, ConfigError, apply_overrides, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = preset(name)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_recipe_values_of_the_spec():
    v = preset("vggsound")
    assert (v.model.num_classes, v.model.n_shared_tokens, v.model.lsa_heads, v.model.proj_dim) == (309, 5, 8, 512)
    assert (v.model.contrastive, v.model.temperature, v.model.release_quirks) == ("blockwise_sep", 0.07, True)
    assert (v.train.batch_size, v.train.epochs, v.train.lr, v.train.weight_decay) == (256, 50, 1e-4, 0.0)
    assert (v.data.bg_prob, v.data.audio.n_fft, v.data.audio.hop) == (0.2, 446, 358)
    c = preset("cremad")
    assert (c.model.num_classes, c.data.audio.sample_rate, c.data.audio.n_fft, c.data.audio.hop) == (6, 22050, 447, 296)
    a = preset("ave")
    assert (a.model.num_classes, a.data.frames_per_clip, a.data.audio.features) == (28, 10, "fbank")


def test_overrides_are_typed():
    cfg = preset("tiny", {"train.batch_size": "32", "model.bg_token": "false", "data.image_mean": "0.5,0.5,0.5",
                          "model.depth": "none", "data.audio.train_random_crop": "false"})
    assert cfg.train.batch_size == 32 and cfg.model.bg_token is False and cfg.data.image_mean == (0.5, 0.5, 0.5)
    assert cfg.model.depth is None and cfg.data.audio.train_random_crop is False


@pytest.mark.parametrize("overrides,match", [
    ({"model.vitt": "x"}, "unknown config key 'model.vitt'.*allowed: vit"),
    ({"nope.x": "1"}, "unknown config key 'nope.x'"),
    ({"train.batch_size": "many"}, "train.batch_size needs int"),
    ({"model.bg_token": "maybe"}, "model.bg_token needs true/false"),
    ({"model.contrastive": "blockwise"}, "model.contrastive='blockwise' is not one of"),
    ({"model.n_shared_tokens": "0"}, "n_shared_tokens=0 but model.shared_tokens is on"),
    ({"model.shared_tokens": "false"}, "needs shared tokens"),
    ({"model.img_size": "40"}, "multiple of the patch size"),
    ({"model": "x"}, "is a section"),
])
def test_bad_overrides_are_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(preset("tiny"), overrides)


def test_unknown_preset_and_unknown_dict_keys():
    with pytest.raises(ConfigError, match="unknown preset 'imagenet'"):
        preset("imagenet")
    d = preset("tiny").to_dict()
    d["train"]["epochz"] = 3
    with pytest.raises(ConfigError, match="train.epochz"):
        Config.from_dict(d)


def test_token_groups_have_no_config_limit():
    """The fused kernel's token limit is the op's business (impl="auto" falls back to the reference)."""
    assert preset("tiny", {"model.n_shared_tokens": "65"}).model.n_shared_tokens == 65
    assert preset("tiny", {"model.n_shared_tokens": "65", "model.lsa": "false"}).model.n_shared_tokens == 65


def test_old_key_parity_maps_to_release_quirks_with_a_warning():
    with pytest.warns(FutureWarning, match="'model.parity' is now 'model.release_quirks'"):
        cfg = preset("tiny", {"model.parity": "false"})
    assert cfg.model.release_quirks is False
    d = preset("tiny").to_dict()
    del d["model"]["release_quirks"]
    d["model"]["parity"] = False
    with pytest.warns(FutureWarning, match="model.parity"):
        assert Config.from_dict(d).model.release_quirks is False


def test_old_key_bg_parity_bug_maps_to_bg_relabel_only_with_a_warning():
    with pytest.warns(FutureWarning, match="'data.bg_parity_bug' is now 'data.bg_relabel_only'"):
        assert preset("tiny", {"data.bg_parity_bug": "true"}).data.bg_relabel_only is True
    d = preset("tiny").to_dict()
    del d["data"]["bg_relabel_only"]
    d["data"]["bg_parity_bug"] = True
    with pytest.warns(FutureWarning, match="data.bg_parity_bug"):
        assert Config.from_dict(d).data.bg_relabel_only is True
