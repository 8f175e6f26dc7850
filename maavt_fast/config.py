"""Typed configuration: the only place defaults live.

`Config` nests `ModelConfig`, `DataConfig` and `TrainConfig`. Named presets (`PRESETS`) are complete
configs; `apply_overrides` changes single fields from dotted keys (``{"train.batch_size": "32"}``)
with type checking and errors that name the unknown key and the allowed ones.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

BG_LABEL = -1  # canonical label of a background (mismatched) pair everywhere inside the library

CONTRASTIVE_MODES = ("blockwise_sep", "blockwise_cmn", "final", "none")
ATTENTION_BACKENDS = ("sdpa", "xformers", "math")
LAYERWISE_TOKEN_MODES = ("none", "common")


class ConfigError(ValueError):
    """A configuration value or key that does not fit."""


@dataclass
class ModelConfig:
    """MA-AVT model (spec §2-§5). `vit` is any timm ViT with patch 16."""

    vit: str = "vit_base_patch16_224.augreg_in21k"
    weights: str | None = None  # local weights file; "timm" loads timm's pretrained weights for `vit`
    img_size: int = 224  # square input side (images and spectrograms)
    depth: int | None = None  # keep only the first `depth` blocks (small test/demo models)
    num_classes: int = 309
    n_audio_tokens: int = 5
    n_visual_tokens: int = 5
    n_shared_tokens: int = 5
    unimodal_tokens: bool = True
    shared_tokens: bool = True
    lsa: bool = True
    lsa_heads: int = 8
    bg_token: bool = True
    contrastive: str = "blockwise_sep"
    proj_dim: int = 512
    temperature: float = 0.07
    layerwise_token: str = "none"  # "common": re-insert fresh LSA tokens before every block (spec §3.2)
    parity: bool = True  # reproduce the release's numerics (1-D pos-embed resampling, trainable ViT CLS)
    attention: str = "sdpa"

    def validate(self) -> None:
        _check_choice("model.contrastive", self.contrastive, CONTRASTIVE_MODES)
        _check_choice("model.attention", self.attention, ATTENTION_BACKENDS)
        _check_choice("model.layerwise_token", self.layerwise_token, LAYERWISE_TOKEN_MODES)
        if self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1, got {self.num_classes}")
        for name, on in (("n_audio_tokens", self.unimodal_tokens), ("n_visual_tokens", self.unimodal_tokens),
                         ("n_shared_tokens", self.shared_tokens)):
            n = getattr(self, name)
            if n < 0 or (on and n == 0):
                group = "unimodal_tokens" if name != "n_shared_tokens" else "shared_tokens"
                raise ConfigError(f"model.{name}={n} but model.{group} is on: use a count >= 1 or turn the group off")
        if self.contrastive != "none" and not (self.shared_tokens and self.n_shared_tokens > 0):
            raise ConfigError(f"model.contrastive={self.contrastive!r} needs shared tokens (model.shared_tokens)")
        if self.img_size % 16:
            raise ConfigError(f"model.img_size must be a multiple of the patch size 16, got {self.img_size}")
        if self.temperature <= 0:
            raise ConfigError(f"model.temperature must be > 0, got {self.temperature}")
        if self.depth is not None and self.depth < 1:
            raise ConfigError(f"model.depth must be >= 1 or None, got {self.depth}")


@dataclass
class AudioConfig:
    """Waveform -> (img_size, img_size) log-spectrogram (spec §1.2-§1.4)."""

    sample_rate: int = 16000
    features: str = "stft"  # "stft" (VGGSound, CREMA-D) or "fbank" (AVE, Kaldi)
    tile_to_seconds: float = 10.0  # repeat the clip until it is at least this long
    window_seconds: float = 5.0  # the crop fed to the STFT
    train_random_crop: bool = True  # False: fixed `test_offset_seconds` in training too (CREMA-D)
    test_offset_seconds: float = 3.0
    n_fft: int = 446
    hop: int = 358

    def validate(self) -> None:
        _check_choice("data.audio.features", self.features, ("stft", "fbank"))
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop <= 0:
            raise ConfigError("data.audio.sample_rate, n_fft and hop must be > 0")


@dataclass
class DataConfig:
    """Where the clips are and how they become tensors (spec §1)."""

    dataset: str = "vggsound"  # vggsound | cremad | ave | csv
    root: str = ""
    frames_per_clip: int = 1  # T
    bg_prob: float = 0.2  # train-time probability of a mismatched (background) pair
    bg_parity_bug: bool = False  # reproduce the release's never-swapped background pairs (spec §1.5)
    val_fraction: float = 0.1  # held out of train, seeded; ignored with val_is_test
    val_is_test: bool = False  # the release's behaviour: validate on the test split
    decode: str = "cpu"  # cpu | dali
    num_workers: int = 2
    skip_bad: bool = False  # skip (and count) unreadable samples instead of raising
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    audio: AudioConfig = field(default_factory=AudioConfig)

    def validate(self) -> None:
        _check_choice("data.dataset", self.dataset, ("vggsound", "cremad", "ave", "csv"))
        _check_choice("data.decode", self.decode, ("cpu", "dali"))
        if not 0.0 <= self.bg_prob < 1.0:
            raise ConfigError(f"data.bg_prob must be in [0, 1), got {self.bg_prob}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.frames_per_clip < 1:
            raise ConfigError(f"data.frames_per_clip must be >= 1, got {self.frames_per_clip}")
        self.audio.validate()


@dataclass
class TrainConfig:
    """Optimisation and the loop (spec §6)."""

    batch_size: int = 256  # global, split over ranks
    epochs: int = 50
    max_steps: int | None = None  # stop early (demo, tests)
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | step
    warmup_epochs: float = 0.0
    step_epochs: int = 15  # StepLR period for schedule="step"
    step_gamma: float = 0.1
    compile: bool = True
    precision: str = "auto"  # auto | bf16 | fp32
    grad_mod: bool = False  # OGM-GE gradient modulation (spec §5.1), with the halves the right way round
    grad_mod_alpha: float = 0.1
    seed: int = 1234
    out_dir: str = "runs/maavt"
    log_every: int = 10
    ckpt_every: int = 200  # steps between `latest` checkpoints
    eval_every: int = 1  # epochs between validations

    def validate(self) -> None:
        _check_choice("train.schedule", self.schedule, ("constant", "cosine", "step"))
        _check_choice("train.precision", self.precision, ("auto", "bf16", "fp32"))
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("train.batch_size and train.epochs must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Inverse of `to_dict`; unknown keys raise `ConfigError`."""
        return _from_dict(cls, d, "").validate()


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls, d: dict, prefix: str):
    hints = _field_types(cls)
    unknown = set(d) - set(hints)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
                          f"allowed: {', '.join(prefix + k for k in hints)}")
    kwargs = {}
    for name, value in d.items():
        t = hints[name]
        if dataclasses.is_dataclass(t):
            kwargs[name] = _from_dict(t, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, t, prefix + name)
    return cls(**kwargs)


def _coerce(value, t, name: str):
    """Convert `value` (possibly a CLI string) to the annotated type `t`."""
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{name} needs {len(args)} comma-separated values, got {value!r}")
        return tuple(_coerce(v, a, name) for v, a in zip(items, args))
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} needs true/false, got {value!r}")
    if t in (int, float, str):
        if isinstance(value, bool) and t is not str:
            raise ConfigError(f"{name} needs {t.__name__}, got {value!r}")
        try:
            out = t(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} needs {t.__name__}, got {value!r}") from None
        if t is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{name} needs an integer, got {value!r}")
        return out
    raise ConfigError(f"{name}: unsupported field type {t}")


def apply_overrides(cfg: Config, overrides: dict[str, str]) -> Config:
    """Set dotted keys (``model.vit``, ``data.audio.hop``) on a copy of `cfg`; returns it validated."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        node, hints, parts = d, _field_types(Config), key.split(".")
        for i, part in enumerate(parts):
            where = ".".join(parts[:i]) or "the top level"
            if part not in hints:
                raise ConfigError(f"unknown config key {key!r}: {part!r} is not in {where}; "
                                  f"allowed: {', '.join(hints)}")
            t = hints[part]
            if i == len(parts) - 1:
                if dataclasses.is_dataclass(t):
                    raise ConfigError(f"config key {key!r} is a section; set one of its fields")
                node[part] = _coerce(value, t, key)
            else:
                if not dataclasses.is_dataclass(t):
                    raise ConfigError(f"unknown config key {key!r}: {part!r} has no fields")
                node, hints = node[part], _field_types(t)
    return Config.from_dict(d)


def _preset_vggsound() -> Config:
    return Config(model=ModelConfig(num_classes=309), data=DataConfig(dataset="vggsound"))


def _preset_cremad() -> Config:
    audio = AudioConfig(sample_rate=22050, tile_to_seconds=9.0, window_seconds=3.0, train_random_crop=False,
                        test_offset_seconds=0.0, n_fft=447, hop=296)
    return Config(model=ModelConfig(num_classes=6), data=DataConfig(dataset="cremad", audio=audio))


def _preset_ave() -> Config:
    audio = AudioConfig(sample_rate=16000, features="fbank", tile_to_seconds=0.0, window_seconds=1.0,
                        train_random_crop=False, test_offset_seconds=0.0, n_fft=400, hop=70)
    return Config(model=ModelConfig(num_classes=28),
                  data=DataConfig(dataset="ave", frames_per_clip=10, bg_prob=0.0, val_fraction=0.0, audio=audio))


def _preset_synthetic() -> Config:
    """The demo: a small random-init ViT on the synthetic dataset `maavt synth` writes (VGGSound layout)."""
    audio = AudioConfig(sample_rate=16000, tile_to_seconds=2.0, window_seconds=1.0, test_offset_seconds=0.5,
                        n_fft=222, hop=144)  # -> 112 x 112 spectrogram
    return Config(
        model=ModelConfig(vit="vit_tiny_patch16_224", img_size=112, depth=4, num_classes=8, proj_dim=128,
                          n_audio_tokens=4, n_visual_tokens=4, n_shared_tokens=4, lsa_heads=4),
        data=DataConfig(dataset="vggsound", bg_prob=0.2, val_fraction=0.15, audio=audio),
        train=TrainConfig(batch_size=32, epochs=6, lr=1e-3, schedule="cosine", warmup_epochs=0.5,
                          out_dir="runs/synthetic", log_every=5, ckpt_every=50),
    )


def _preset_tiny() -> Config:
    """Unit tests: the smallest model that still exercises every code path."""
    cfg = _preset_synthetic()
    cfg.model = ModelConfig(vit="vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5, proj_dim=16,
                            n_audio_tokens=3, n_visual_tokens=3, n_shared_tokens=3, lsa_heads=4)
    cfg.train = TrainConfig(batch_size=4, epochs=1, compile=False, out_dir="runs/tiny", log_every=1, ckpt_every=2)
    return cfg


PRESETS = {
    "vggsound": _preset_vggsound,
    "cremad": _preset_cremad,
    "ave": _preset_ave,
    "synthetic": _preset_synthetic,
    "tiny": _preset_tiny,
}


def preset(name: str, overrides: dict[str, str] | None = None) -> Config:
    """A named, complete, validated config with optional dotted overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[name](), overrides or {})
