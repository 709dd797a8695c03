"""Convert an openai guided-diffusion (ADM) UNet checkpoint into a stock diffusers `UNet2DModel`.

The released files (e.g. ``256x256_diffusion_uncond.pt`` from https://github.com/openai/guided-diffusion) are plain
state dicts of ``guided_diffusion.unet.UNetModel``. Stock diffusers has every block that architecture uses (with
``resblock_updown``), so the weights are mapped onto it rather than vendoring the original code:

    ADM                                      diffusers UNet2DModel
    time_embed.0 / .2                        time_embedding.linear_1 / .linear_2
    label_emb (class-conditional models)     class_embedding
    input_blocks.0.0                         conv_in
    input_blocks.N.0 / .N.1                  down_blocks.l.resnets.i / .attentions.i
    input_blocks.N.0 between levels          down_blocks.l.downsamplers.0   (ResBlock with avg-pool 2)
    middle_block.0 / .1 / .2                 mid_block.resnets.0 / .attentions.0 / .resnets.1
    output_blocks.N.0 / .N.1                 up_blocks.u.resnets.i / .attentions.i
    output_blocks.N.1|2 ending a level       up_blocks.u.upsamplers.0       (ResBlock with nearest x2)
    out.0 / out.2                            conv_norm_out / conv_out
    ResBlock: in_layers.0/.2, emb_layers.1, out_layers.0/.3, skip_connection
                                          -> norm1/conv1, time_emb_proj, norm2/conv2, conv_shortcut
    AttentionBlock: norm, qkv (conv1d), proj_out (conv1d) -> group_norm, to_q/to_k/to_v, to_out.0

Levels with attention become AttnDownBlock2D / AttnUpBlock2D, the others ResnetDownsampleBlock2D /
ResnetUpsampleBlock2D. ADM's timestep embedding is [cos, sin] (``flip_sin_to_cos=True, freq_shift=0``) and its
GroupNorm eps is torch's 1e-5; the mid block must be told to keep its attention GroupNorm (``attn_norm_num_groups``),
which diffusers drops for scale-shift models. The released models use the legacy QKV layout, qkv channels ordered
(heads, 3, head_dim): they are regrouped before the split, since a plain chunk(3) loads fine and computes garbage.
The head width is not stored in the weights, so ``num_head_channels`` (64 in the released models) must be given.

The learned-sigma models have 6 output channels: epsilon is the first 3, the last 3 interpolate the log-variance.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import Tensor

from ood_lightning.io import collect_state, load_checkpoint, raise_on_problems

_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "class_embedding": "label_emb", "conv_norm_out": "out.0",
        "conv_out": "out.2"}
_LEAVES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
           "group_norm": "norm", "to_q": "qkv", "to_k": "qkv", "to_v": "qkv", "to_out.0": "proj_out"}
_QKV = ("to_q", "to_k", "to_v")
_RES_PARTS = {"in_layers", "emb_layers", "out_layers", "skip_connection"}
_ATTN_PARTS = {"norm", "qkv", "proj_out"}
_REQUIRED = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
_SHOWN = 8


def adm_unet_config(state_dict: Mapping[str, Tensor], num_head_channels: int = 64, image_size: int = 256) -> dict:
    """`UNet2DModel` constructor arguments for an ADM state dict, read from its keys and shapes.

    Only the architecture is inferred here; `convert_adm_state_dict` checks every tensor against it.
    """
    _check_layout(state_dict)
    parts: dict[str, set[str]] = defaultdict(set)  # "input_blocks.5.1" -> {"norm", "qkv", "proj_out"}
    for key in state_dict:
        p = key.split(".")
        if p[0] in ("input_blocks", "output_blocks") and len(p) > 4:
            parts[".".join(p[:3])].add(p[3])
    if conv := sorted(m for m, sub in parts.items() if sub & {"op", "conv"}):
        raise ValueError(f"convolutional up/downsampling ({conv[0]}): this converter maps ADM models with "
                         "resblock_updown=True (all released guided-diffusion checkpoints) only")
    n_in, n_out = (1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith(f"{name}.")), default=-1)
                   for name in ("input_blocks", "output_blocks"))
    ups = [j for j in range(n_out) if any(parts[f"output_blocks.{j}.{k}"] & _RES_PARTS for k in (1, 2))]
    per_level = ups[0] + 1 if ups else n_out  # ResBlocks per output level = num_res_blocks + 1
    levels = n_out // per_level if per_level else 0
    if (not levels or n_out != levels * per_level or n_in != n_out
            or ups != [lv * per_level + per_level - 1 for lv in range(levels - 1)]):
        raise ValueError(f"unexpected ADM block structure: {n_in} input blocks, {n_out} output blocks, upsampling "
                         f"ResBlocks in output blocks {ups}")
    layers = per_level - 1
    channels = [_shape(state_dict, f"input_blocks.{1 + lv * per_level}.0.out_layers.3.weight")[0]
                for lv in range(levels)]
    attention = []
    for lv in range(levels):
        modules = [f"input_blocks.{1 + lv * per_level + i}.1" for i in range(layers)]
        modules += [f"output_blocks.{(levels - 1 - lv) * per_level + i}.1" for i in range(per_level)]
        flags = {bool(parts[m] & _ATTN_PARTS) for m in modules}
        if len(flags) != 1:
            raise ValueError(f"level {lv} has attention in only some of its blocks ({modules}); diffusers' blocks "
                             "put it after every ResBlock of a level or none")
        attention.append(flags.pop())
    widths = sorted({c for c, a in zip(channels, attention) if a} | {channels[-1]})
    if num_head_channels < 1 or any(w % num_head_channels for w in widths):
        raise ValueError(f"num_head_channels={num_head_channels} does not divide the attention widths {widths}: "
                         "pass the head width the model was trained with (64 for the released models)")
    if image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size={image_size} is not divisible by 2**{levels - 1} (the model has {levels} levels)")
    emb = _shape(state_dict, "input_blocks.1.0.emb_layers.1.weight")[0]
    if emb not in (channels[0], 2 * channels[0]):
        raise ValueError(f"input_blocks.1.0.emb_layers.1.weight has {emb} outputs: expected {channels[0]} or "
                         f"{2 * channels[0]} (use_scale_shift_norm)")
    in_channels, out_channels = _shape(state_dict, "input_blocks.0.0.weight")[1], _shape(state_dict, "out.2.weight")[0]
    return dict(
        sample_size=image_size, in_channels=in_channels, out_channels=out_channels,
        block_out_channels=tuple(channels), layers_per_block=layers,
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention)),
        mid_block_type="UNetMidBlock2D", downsample_type="resnet", upsample_type="resnet",
        attention_head_dim=num_head_channels, norm_num_groups=32, attn_norm_num_groups=32, norm_eps=1e-5,
        resnet_time_scale_shift="scale_shift" if emb == 2 * channels[0] else "default",
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
        num_class_embeds=_shape(state_dict, "label_emb.weight")[0] if "label_emb.weight" in state_dict else None,
    )


def convert_adm_state_dict(state_dict: Mapping[str, Tensor], config: Mapping, *,
                           legacy_qkv_order: bool = True) -> dict[str, Tensor]:
    """ADM weights renamed and reshaped for `UNet2DModel(**config)`, float32.

    Every tensor the model needs is pulled from `state_dict` and checked, so a missing, extra or wrongly shaped
    tensor is refused with its ADM name before anything is loaded. ``legacy_qkv_order=False`` is for models
    trained with ADM's ``use_new_attention_order=True`` (qkv channels ordered (3, heads, head_dim)).
    """
    modules = _module_map(config)
    shapes = {key: tuple(shape) for key, shape in _expected_shapes(config).items()}
    sources = {key: _source(key, modules) for key in shapes}  # diffusers key -> (ADM key, diffusers leaf)
    out, problems = collect_state(
        state_dict, shapes, lambda key: sources[key][0],
        source_shape=lambda key, shape: _adm_shape(sources[key][1], key, shape),
        take=lambda key, value: _take(value, sources[key][1], heads=shapes[key][0] // config["attention_head_dim"],
                                      legacy=legacy_qkv_order))
    raise_on_problems(problems, "ADM state dict", hint=" inferred from it (block_out_channels "
                      f"{list(config['block_out_channels'])}, layers_per_block {config['layers_per_block']})")
    return out


def load_adm_unet(path: str | os.PathLike, num_head_channels: int = 64, image_size: int = 256) -> UNet2DModel:
    """An ADM checkpoint file as a diffusers `UNet2DModel` in eval mode, loaded strictly (all tensors or an error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: this needs openai's guided-diffusion UNet checkpoint, e.g. 256x256_diffusion_uncond.pt "
            "from https://github.com/openai/guided-diffusion, downloaded into checkpoints/ "
            "(checkpoints/256x256_diffusion_uncond.pt)")
    state = load_checkpoint(path)
    try:
        config = adm_unet_config(state, num_head_channels, image_size)
        weights = convert_adm_state_dict(state, config)
    except ValueError as e:  # the same error type (a StateDictMismatchError stays one), naming the file
        raise type(e)(f"{path}: {e}") from e
    with torch.device("meta"):  # no random init of hundreds of millions of weights that are replaced right away
        model = UNet2DModel(**config)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def _check_layout(state_dict: Mapping[str, Tensor]) -> None:
    """Refuse anything that is not a plain ADM state dict, saying what it looks like instead."""
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        keys = list(state_dict)[:_SHOWN] if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise ValueError(f"not a plain state dict of tensors ({keys}): openai guided-diffusion checkpoints are "
                         "torch.save(model.state_dict())")
    if missing := [k for k in _REQUIRED if k not in state_dict]:
        hint = ""
        if any(k.startswith("model.diffusion_model.") for k in state_dict):
            hint = " (its model.diffusion_model.* keys are a CompVis latent-diffusion checkpoint)"
        elif "conv_in.weight" in state_dict:
            hint = " (it is a diffusers UNet: load its folder with UNet2DModel.from_pretrained)"
        raise ValueError(f"not an openai guided-diffusion (ADM) UNet state dict{hint}: no {missing}; its keys "
                         f"begin {list(state_dict)[:_SHOWN]}")


def _shape(state_dict: Mapping[str, Tensor], key: str) -> torch.Size:
    if key not in state_dict:
        raise ValueError(f"missing {key}, needed to infer the architecture")
    return state_dict[key].shape


def _module_map(config: Mapping) -> dict[str, str]:
    """diffusers module -> ADM module, for every block `config` can have."""
    n = config["layers_per_block"]
    names = dict(_TOP, **{"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                          "mid_block.resnets.1": "middle_block.2"})
    for lv in range(len(config["down_block_types"])):
        for i in range(n):
            names[f"down_blocks.{lv}.resnets.{i}"] = f"input_blocks.{1 + lv * (n + 1) + i}.0"
            names[f"down_blocks.{lv}.attentions.{i}"] = f"input_blocks.{1 + lv * (n + 1) + i}.1"
        names[f"down_blocks.{lv}.downsamplers.0"] = f"input_blocks.{1 + lv * (n + 1) + n}.0"
    for u, kind in enumerate(config["up_block_types"]):
        for i in range(n + 1):
            names[f"up_blocks.{u}.resnets.{i}"] = f"output_blocks.{u * (n + 1) + i}.0"
            names[f"up_blocks.{u}.attentions.{i}"] = f"output_blocks.{u * (n + 1) + i}.1"
        names[f"up_blocks.{u}.upsamplers.0"] = f"output_blocks.{u * (n + 1) + n}.{2 if kind.startswith('Attn') else 1}"
    return names


def _expected_shapes(config: Mapping) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in UNet2DModel(**config).state_dict().items()}


def _source(key: str, modules: Mapping[str, str]) -> tuple[str, str]:
    """diffusers parameter -> (ADM parameter, diffusers leaf module such as 'to_q', or '' for a top-level one)."""
    module, param = key.rsplit(".", 1)
    if module in modules:
        return f"{modules[module]}.{param}", ""
    for leaf, adm_leaf in _LEAVES.items():
        owner = module.removesuffix("." + leaf)
        if owner != module and owner in modules:
            return f"{modules[owner]}.{adm_leaf}.{param}", leaf
    raise RuntimeError(f"UNet2DModel has a parameter {key} this converter does not know: diffusers changed?")


def _adm_shape(leaf: str, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The ADM shape behind a diffusers tensor: qkv stacks 3 projections, ADM's attention projections are conv1d."""
    shape = (3 * shape[0], *shape[1:]) if leaf in _QKV else tuple(shape)
    return (*shape, 1) if leaf in (*_QKV, "to_out.0") and key.endswith("weight") else shape


def _take(t: Tensor, leaf: str, heads: int, legacy: bool) -> Tensor:
    if leaf in _QKV:
        rest = t.shape[1:]
        grouped = t.reshape(heads, 3, -1, *rest).transpose(0, 1) if legacy else t.reshape(3, heads, -1, *rest)
        t = grouped.reshape(3, -1, *rest)[_QKV.index(leaf)].clone()  # own storage: safetensors refuses shared ones
    if leaf in (*_QKV, "to_out.0") and t.ndim == 3:
        t = t.squeeze(-1)
    return t.to(torch.float32).contiguous()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert an openai guided-diffusion UNet checkpoint into a diffusers UNet2DModel folder "
                    "(config.json + safetensors) that UNet2DModel.from_pretrained loads.",
        epilog="example:\n  python -m ood_lightning.detectors.diffguard.gdm.adm_checkpoint "
               "checkpoints/256x256_diffusion_uncond.pt checkpoints/adm256_uncond",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="ADM state dict, e.g. checkpoints/256x256_diffusion_uncond.pt")
    parser.add_argument("out_dir", help="folder to write the diffusers UNet2DModel into")
    parser.add_argument("--num_head_channels", type=int, default=64,
                        help="attention head width the model was trained with; not stored in the weights "
                             "(default: 64, as in the released models)")
    parser.add_argument("--image_size", type=int, default=256, help="training resolution, saved as sample_size "
                        "(default: 256)")
    args = parser.parse_args(argv)
    unet = load_adm_unet(args.checkpoint, args.num_head_channels, args.image_size)
    unet.save_pretrained(args.out_dir)
    c = unet.config
    attention = [lv for lv, kind in enumerate(c.down_block_types) if kind.startswith("Attn")]
    print(f"{args.checkpoint} -> {args.out_dir}: {sum(p.numel() for p in unet.parameters()):,} parameters, "
          f"{len(c.block_out_channels)} levels of {c.layers_per_block} ResBlocks, channels "
          f"{list(c.block_out_channels)}, attention at levels {attention} + middle, {c.out_channels} output channels")


if __name__ == "__main__":
    main()
