"""The frozen timm ViT shared by both modalities: building it, loading weights, embedding inputs.

Nothing downloads unless asked: `weights=None` is a random init, a path loads a local file
(.safetensors, .pth/.pt/.bin state dicts, JAX .npz), and `weights="timm"` uses timm's own pretrained
mechanism (hub or local cache) for the tag in `ModelConfig.vit`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maavt_fast._extras import requires
from maavt_fast.config import PATCH_SIZE, ConfigError, ModelConfig
from maavt_fast.safe_load import load_data_only

with requires("model", __name__):
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

log = logging.getLogger(__name__)

_IGNORED_PREFIXES = ("head.",)  # the classifier head of the pretrained ViT is never used


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or does not fit the chosen ViT."""


def build_vit(cfg: ModelConfig, weights_follow: bool = False) -> VisionTransformer:
    """timm ViT without its head, every parameter frozen, weights per `cfg.weights`; `weights_follow`: a
    checkpoint will supply them (no warning about a random init)."""
    kwargs = dict(num_classes=0, img_size=cfg.img_size)
    if cfg.depth is not None:
        kwargs["depth"] = cfg.depth
    pretrained = cfg.weights == "timm"
    if pretrained:
        log.info("loading pretrained ViT weights through timm for %s (hub or local cache)", cfg.vit)
    try:
        vit = timm.create_model(cfg.vit, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        raise WeightsError(f"timm could not build {cfg.vit!r}: {e}") from e
    if not isinstance(vit, VisionTransformer) or vit.patch_embed.patch_size != (PATCH_SIZE, PATCH_SIZE):
        raise ConfigError(f"model.vit={cfg.vit!r} must be a timm VisionTransformer with patch size {PATCH_SIZE}")
    if vit.reg_token is not None or vit.no_embed_class or vit.global_pool != "token":
        raise ConfigError(f"model.vit={cfg.vit!r}: only class-token ViTs without register tokens are supported")
    vit.patch_embed.strict_img_size = False
    if cfg.weights is None and cfg.depth is None and not weights_follow:
        log.warning("model.weights is not set: the frozen %s is randomly initialised (right for tests and "
                    "benchmarks, not for training on real data)", cfg.vit)
    if cfg.weights not in (None, "timm"):
        load_vit_weights(vit, cfg.weights)
    vit.requires_grad_(False)
    return vit


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pth / .pt / .bin file (unwrapping `state_dict` / `model` containers)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = load_data_only(path)
    except Exception as e:  # corrupt or foreign files raise many different types
        raise WeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e
    return tensors_in(sd, f"weights file {path}")


def tensors_in(obj: object, what: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded file (inside a `state_dict` / `model` container if there is one); a
    `WeightsError` mentioning `what` if it is not a dict of tensors."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what} does not hold a state dict of tensors")
    return obj


def _jax_depth_and_width(path: Path) -> tuple[int, int | None]:
    """Blocks and width of a JAX ViT `.npz`: numbered `encoderblock_{i}/...` keys (AugReg) or a stacked
    `encoderblock/...` axis (big_vision); width None when the file has no `embedding/kernel`."""
    with np.load(path) as npz:
        numbered = {m[1] for k in npz.files if (m := re.search(r"encoderblock_(\d+)/", k))}
        stacked = [npz[k].shape[0] for k in npz.files if k.endswith("encoderblock/LayerNorm_0/scale")]
        width = [npz[k].shape[-1] for k in npz.files if k.endswith("embedding/kernel")]
    return (stacked[0] if stacked else len(numbered)), (width[0] if width else None)


def _load_jax_weights(vit: VisionTransformer, path: Path) -> None:
    """timm's JAX loader, after checking the file's depth and width: timm fills the ViT's blocks and ignores
    any further ones in the file, so a deeper checkpoint would otherwise load partially without a word."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        depth, width = _jax_depth_and_width(path)
    except Exception as e:  # not a zip, or a corrupt one
        raise WeightsError(f"cannot load JAX weights {path}: not a readable .npz: {type(e).__name__}: {e}") from e
    if width is not None and (depth, width) != (len(vit.blocks), vit.embed_dim):
        raise WeightsError(f"JAX weights {path} hold {depth} blocks of width {width}; this ViT has "
                           f"{len(vit.blocks)} blocks of width {vit.embed_dim}")
    try:
        vit.load_pretrained(str(path))
    except Exception as e:
        raise WeightsError(f"cannot load JAX weights {path} into this ViT: {type(e).__name__}: {e}") from e


def load_vit_weights(vit: VisionTransformer, path: str | Path) -> None:
    """Load a local pretrained-ViT file into `vit`; errors name missing/unexpected keys and shape mismatches."""
    path = Path(path)
    if path.suffix == ".npz":
        _load_jax_weights(vit, path)
        return
    sd = read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES)}
    sd = checkpoint_filter_fn(sd, vit)  # timm's own conversions (other layouts, pos-embed resize to img_size)
    check_state_dict_fits(vit, sd, f"weights file {path}", ignore=_IGNORED_PREFIXES)
    vit.load_state_dict(sd, strict=False)


def check_state_dict_fits(expected: torch.nn.Module | dict[str, torch.Tensor], sd: dict[str, torch.Tensor],
                          what: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise `WeightsError` naming every missing/unexpected key and shape mismatch of `sd` against `expected`
    (a module's state dict, or a dict of the tensors it must hold); keys starting with `ignore` do not count."""
    own = expected.state_dict() if isinstance(expected, torch.nn.Module) else expected
    own = {k: v for k, v in own.items() if not k.startswith(ignore)} if ignore else own
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_short(shapes)}")
        raise WeightsError(f"{what} does not fit the model: " + "; ".join(parts))


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def embed_patches(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Images `(N, 3, S, S)` or spectrograms `(N, S, S)` -> patch tokens `(N, (S/PATCH_SIZE)^2, D)`, row-major.

    A spectrogram goes through the conv as one channel with the weights summed over the input channels,
    which equals the release's copy of the spectrogram to 3 identical channels.
    """
    w, b = vit.patch_embed.proj.weight, vit.patch_embed.proj.bias
    if x.dim() == 3:
        y = F.conv2d(x.unsqueeze(1), w.sum(dim=1, keepdim=True), b, stride=PATCH_SIZE)
    else:
        y = F.conv2d(x, w, b, stride=PATCH_SIZE)
    return y.flatten(2).transpose(1, 2)


def position_embedding(vit: VisionTransformer, with_bg: bool, release_quirks: bool) -> torch.Tensor:
    """Positional embedding `(1, 1 + P (+1 with the BG token), D)` for `[CLS, patches(, BG)]`.

    release_quirks: the release resamples the 1-D (1, 1+P, D) table linearly to the longer sequence when the BG
    token is on (docs/model.md#token-layout). Otherwise the original table is kept and BG gets a zero embedding.
    """
    pos = vit.pos_embed
    if not with_bg:
        return pos
    if release_quirks:
        return F.interpolate(pos.transpose(1, 2), size=pos.shape[1] + 1, mode="linear",
                             align_corners=False).transpose(1, 2)
    return torch.cat([pos, pos.new_zeros(1, 1, pos.shape[2])], dim=1)
