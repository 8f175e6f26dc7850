"""Config files (YAML or JSON) and the layering of a config: preset, then the file, then dotted options.

A file holds any part of a config as nested mappings (`{"train": {"lr": 0.001}}`); the sections and
fields it leaves out keep the values of the layer below it (the preset, else the library defaults).
The `config.json` a run saves is complete and holds absolute paths, so `--config run/config.json`
reproduces the run from any working directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from maavt_fast.config import Config, ConfigError, apply_overrides

# fields holding a path relative to the working directory; made absolute in a saved config
PATH_FIELDS = (("data", "root"), ("model", "weights"), ("train", "out_dir"))
WEIGHT_TAGS = ("timm",)  # model.weights values that are not paths


def read_config_file(path: str | Path) -> dict:
    """The mapping in a YAML (.yaml/.yml, or anything else) or JSON (.json) file; ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML: {getattr(e, 'problem', None) or e}{at}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: needs a mapping of sections (model/data/train), got "
                          f"{type(data).__name__}")
    return data


def _merge(base: dict, layer: dict, where: str, path: Path) -> dict:
    out = dict(base)
    for key, value in layer.items():
        if key not in base:
            raise ConfigError(f"--config {path}: unknown key {where}{key}; allowed: "
                              f"{', '.join(where + k for k in base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"--config {path}: {where}{key} is a section and needs a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}{key}.", path)
        else:
            out[key] = value
    return out


def layered_config(base: Config, file: str | Path | None, overrides: dict[str, str]) -> Config:
    """`base` (a preset, a checkpoint's config or the defaults), then the file's keys, then dotted overrides."""
    if file is not None:
        merged = _merge(base.to_dict(), read_config_file(file), "", Path(file))
        try:
            base = Config.from_dict(merged)
        except ConfigError as e:
            raise ConfigError(f"--config {file}: {e}") from None
    return apply_overrides(base, overrides)


def with_absolute_paths(cfg: Config) -> Config:
    """A copy of `cfg` whose path fields are absolute (resolved against the working directory)."""
    d = cfg.to_dict()
    for section, name in PATH_FIELDS:
        value = d[section][name]
        if value and value not in WEIGHT_TAGS:
            d[section][name] = str(Path(value).expanduser().resolve())
    return Config.from_dict(d)
