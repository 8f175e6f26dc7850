"""A complete config for an official checkpoint: the model read from the file, the rest from a base config.

The base is `--preset`/`--config` when given, else the preset of the dataset with the file's class count
(309 VGGSound, 6 CREMA-D, 28 AVE; VGGSound's otherwise). Dotted overrides apply last; one that contradicts
the file is refused in the file's own key names.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from maavt_fast.config import AudioConfig, Config, apply_overrides, preset
from maavt_fast.model.official_infer import SINGLE_HEAD_MODES, describe, infer_official_model

PRESET_BY_CLASSES = {309: "vggsound", 6: "cremad", 28: "ave"}


def fit_spectrogram(audio: AudioConfig, img_size: int) -> AudioConfig:
    """`audio` with n_fft/hop giving `(img_size, img_size)` log-STFT spectrograms over the same window
    (unchanged if it already does, or if no hop fits)."""
    if audio.spectrogram_shape(img_size) == (img_size, img_size):
        return audio
    fitted = dataclasses.replace(audio, n_fft=2 * (img_size - 1), hop=max(audio.window_samples // (img_size - 1), 1))
    return fitted if fitted.spectrogram_shape(img_size) == (img_size, img_size) else audio


def config_for_official(official: dict, path: str | Path, base: Config | None,
                        overrides: dict[str, str]) -> tuple[Config, list[str]]:
    """The config to load and run `official` (a loaded official checkpoint) with, and lines saying what was
    read from the file and where the rest came from."""
    what = f"official checkpoint {path}"
    found = infer_official_model(official, what)
    fields = dict(found.fields)
    notes = []
    if base is None:
        name = PRESET_BY_CLASSES.get(fields["num_classes"], "vggsound")
        base = preset(name)
        known = fields["num_classes"] in PRESET_BY_CLASSES
        notes.append(f"data and training settings: the {name} preset's" + (
            "" if known else f" (no preset has {fields['num_classes']} classes: set yours with --preset, --config "
                             "or --data.*)"))
        audio = fit_spectrogram(base.data.audio, fields["img_size"])
        if audio != base.data.audio:
            notes.append(f"data.audio.n_fft={audio.n_fft}, data.audio.hop={audio.hop}: "
                         f"{fields['img_size']}x{fields['img_size']} spectrograms for the file's input size")
            base = dataclasses.replace(base, data=dataclasses.replace(base.data, audio=audio))
    if fields["contrastive"] in SINGLE_HEAD_MODES:
        if base.model.contrastive in SINGLE_HEAD_MODES:
            fields["contrastive"] = base.model.contrastive
        notes.append(f"one projection head: contrastive {fields['contrastive']} assumed (the file cannot tell "
                     "blockwise_cmn from final; --model.contrastive chooses; only the eval loss differs)")
    model = dataclasses.replace(base.model, **fields)
    cfg = apply_overrides(dataclasses.replace(base, model=model), overrides)
    found.check(cfg.model, what)
    lines = [f"{path}: {describe(cfg.model, found.vit)}"] + [f"  {n}" for n in notes]
    return cfg, lines
