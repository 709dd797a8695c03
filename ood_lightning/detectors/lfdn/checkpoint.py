"""Read and write checkpoints in the layout of the official LFDN code (xbyym/DLSR ``checkpoint-*.pth``).

The official file is ``torch.save({'model': state, 'model_ema': None, 'epoch': int, 'args': argparse.Namespace,
...})``. In ``state``:

- raw denoiser weights: ``model.diffusion_model.<official name>``, e.g. ``model.diffusion_model.input_proj.1.weight``;
- EMA weights (LitEma buffers): ``model_ema.`` + ``diffusion_model.<official name>`` with every dot removed, e.g.
  ``model_ema.diffusion_modelinput_proj1weight``; plus ``model_ema.decay`` and ``model_ema.num_updates``;
- in real checkpoints also the encoder, the dummy class embedder and the schedule buffers, which are ignored here.

Official module layout -> ours (``network.py``)::

    input_proj.1                     input_proj               (input_proj.0 is the SiLU)
    time_embed.0 / time_embed.2      time_embedding.linear_1 / linear_2
    res_blocks.i.in_layers.0 / .2    blocks.i.norm1 / linear1
    res_blocks.i.emb_layers.1        blocks.i.time_emb_proj
    res_blocks.i.out_layers.0 / .3   blocks.i.norm2 / linear2
    out.0 / out.2                    norm_out / proj_out
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ood_lightning.errors import StateDictMismatchError
from ood_lightning.io import atomic_write, collect_state, load_checkpoint, raise_on_problems

from .network import LFDN

RAW_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
_EMA_EXTRA = ("model_ema.decay", "model_ema.num_updates")

_TOP = {"input_proj.1": "input_proj", "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2", "out.0": "norm_out", "out.2": "proj_out"}
_BLOCK = {"in_layers.0": "norm1", "in_layers.2": "linear1", "emb_layers.1": "time_emb_proj",
          "out_layers.0": "norm2", "out_layers.3": "linear2"}
_TOP_INV = {v: k for k, v in _TOP.items()}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}


def official_name(ours: str) -> str:
    """``blocks.3.linear1.weight`` -> ``res_blocks.3.in_layers.2.weight`` (name inside ``diffusion_model``)."""
    module, param = ours.rsplit(".", 1)
    if m := re.fullmatch(r"blocks\.(\d+)\.(\w+)", module):
        return f"res_blocks.{m[1]}.{_BLOCK_INV[m[2]]}.{param}"
    return f"{_TOP_INV[module]}.{param}"


def ema_key(ours: str) -> str:
    """Our parameter name -> its LitEma buffer key, e.g. ``model_ema.diffusion_modelinput_proj1weight``."""
    return EMA_PREFIX + ("diffusion_model." + official_name(ours)).replace(".", "")


def _infer_config(state: Mapping[str, Tensor], what: str) -> dict:
    """LFDN constructor arguments from the raw tensor shapes."""
    need = [RAW_PREFIX + k for k in ("input_proj.1.weight", "time_embed.0.weight", "out.2.weight")]
    if missing := [k for k in need if not isinstance(state.get(k), Tensor)]:
        raise StateDictMismatchError(f"{what} is not an LFDN checkpoint state: it lacks {missing} (expected the "
                                     "'model' state of an official checkpoint-*.pth from xbyym/DLSR)")
    hidden_dim, in_dim = state[need[0]].shape
    time_embed_dim, sinusoid_dim = state[need[1]].shape
    out_dim, out_hidden = state[need[2]].shape
    if out_dim != in_dim or sinusoid_dim != hidden_dim or out_hidden != hidden_dim:
        raise StateDictMismatchError(
            f"{what}: inconsistent LFDN shapes: {need[0]} {tuple(state[need[0]].shape)}, {need[1]} "
            f"{tuple(state[need[1]].shape)}, {need[2]} {tuple(state[need[2]].shape)} (this LFDN needs "
            "out_channels == in_channels and sinusoid size == model_channels)")
    blocks = {int(m[1]) for k in state if (m := re.match(re.escape(RAW_PREFIX) + r"res_blocks\.(\d+)\.", k))}
    return dict(in_dim=int(in_dim), hidden_dim=int(hidden_dim), time_embed_dim=int(time_embed_dim),
                num_blocks=max(blocks) + 1 if blocks else 0)


def official_state_to_ours(state: Mapping, what: str = "LFDN checkpoint state") -> tuple[dict, dict]:
    """Official state dict (or the whole checkpoint dict) -> (raw_state, ema_state) in our LFDN naming.

    ``ema_state`` is ``{}`` when the state holds no EMA weights at all. Keys outside the denoiser
    (encoder, class embedder, schedule buffers) are ignored; any unknown key inside ``model.diffusion_model.*``
    or ``model_ema.*``, a missing key, a wrong shape or a non-finite tensor raises StateDictMismatchError (a
    ValueError) listing all of them; ``what`` names the state in that message.
    """
    if isinstance(state.get("model"), Mapping):
        state = state["model"]
    config = _infer_config(state, what)
    wanted = {k: tuple(v.shape) for k, v in _meta_model(config).state_dict().items()}
    raw, problems = collect_state(state, wanted, lambda k: RAW_PREFIX + official_name(k), finite=True,
                                  foreign=lambda key: key.startswith(RAW_PREFIX))
    ema = {}
    if any(_is_ema_weight(key) for key in state):
        ema, ema_problems = collect_state(state, wanted, ema_key, finite=True, foreign=_is_ema_weight)
        problems += ema_problems
    raise_on_problems(problems, what, hint=f" (an LFDN{config}, sized from the file's own tensor shapes)")
    return raw, ema


def _is_ema_weight(key: str) -> bool:
    return key.startswith(EMA_PREFIX) and key not in _EMA_EXTRA


def ours_to_official_state(raw: Mapping, ema: Mapping, *, num_updates: int, decay: float = 0.9999) -> dict:
    """Our (raw, EMA) state dicts -> the official ``checkpoint['model']`` layout (denoiser part only)."""
    state = {RAW_PREFIX + official_name(k): v.detach().cpu() for k, v in raw.items()}
    state[EMA_PREFIX + "decay"] = torch.tensor(decay, dtype=torch.float32)
    state[EMA_PREFIX + "num_updates"] = torch.tensor(num_updates, dtype=torch.int32)
    state.update({ema_key(k): v.detach().cpu() for k, v in ema.items()})
    return state


def _meta_model(config: dict) -> LFDN:
    with torch.device("meta"):
        return LFDN(**config)


def _state_of(m: nn.Module | Mapping) -> Mapping:
    return m.state_dict() if isinstance(m, nn.Module) else m


def save_official_checkpoint(path, raw_model: nn.Module | Mapping, ema_model: nn.Module | Mapping, *,
                             epoch: int, num_updates: int, args: dict | None = None, decay: float = 0.9999) -> None:
    """Write ``{'model', 'model_ema': None, 'epoch', 'args': Namespace}`` as the official code does (atomically)."""
    state = ours_to_official_state(_state_of(raw_model), _state_of(ema_model), num_updates=num_updates, decay=decay)
    ckpt = {"model": state, "model_ema": None, "epoch": int(epoch), "args": argparse.Namespace(**(args or {}))}
    atomic_write(path, lambda file: torch.save(ckpt, file))


def _torch_load(path: Path) -> dict:
    """weights_only load that allows exactly one extra type, argparse.Namespace (the official ``args``)."""
    if not path.is_file():
        raise FileNotFoundError(f"LFDN checkpoint not found: {path} (expected an official checkpoint-*.pth "
                                "from xbyym/DLSR or one written by save_official_checkpoint)")
    return load_checkpoint(path, allow=[argparse.Namespace])


def load_official_checkpoint(path, *, ema: bool = True) -> tuple[LFDN, dict]:
    """Build an LFDN sized from the tensor shapes and load its EMA (default) or raw weights strictly.

    Returns ``(model, info)``: the model in eval mode on the CPU, and
    ``info = {path, epoch, args (dict), weights ('ema' | 'raw'), ema_num_updates, ema_decay, config}``.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise ValueError(f"{path}: not an official LFDN checkpoint (expected a dict with a 'model' state dict)")
    state = ckpt["model"]
    raw, ema_state = official_state_to_ours(state, what=f"LFDN checkpoint {path}")
    if ema and not ema_state:
        raise StateDictMismatchError(f"{path}: holds no EMA weights (model_ema.*); pass ema=False to load the raw "
                                     "weights")
    config = _infer_config(state, str(path))
    model = LFDN(**config)
    model.load_state_dict(ema_state if ema else raw, strict=True)
    args = ckpt.get("args")
    info = {
        "path": str(path),
        "epoch": ckpt.get("epoch"),
        "args": vars(args) if isinstance(args, argparse.Namespace) else dict(args or {}),
        "weights": "ema" if ema else "raw",
        "ema_num_updates": int(state[EMA_PREFIX + "num_updates"]) if EMA_PREFIX + "num_updates" in state else None,
        "ema_decay": float(state[EMA_PREFIX + "decay"]) if EMA_PREFIX + "decay" in state else None,
        "config": config,
    }
    return model.eval(), info
