"""Convert CompVis latent-diffusion's class-conditional ImageNet model (``cin256-v2/model.ckpt``) to diffusers parts.

DiffGuard's LDM path runs this model; diffusers has no class-conditional LDM pipeline, so the checkpoint is split
into the three pieces the DiffGuard loop needs, each checked key by key (a wrong architecture is refused, never
half-loaded):

- ``first_stage_model.*`` (VQ-f4 encoder/decoder, quant_conv, post_quant_conv, codebook) -> ``diffusers.VQModel``.
  ``vae.encode(x).latents`` is the pre-quantisation latent, as LDM's ``encode_first_stage``; ``vae.decode(h)``
  quantises first, as LDM's ``decode_first_stage``. LDM's scale_factor is 1, so no latent scaling anywhere.
- ``model.diffusion_model.*`` (openaimodel UNet with SpatialTransformer cross-attention) ->
  ``diffusers.UNet2DConditionModel``: the raw weights, which CompVis' DDIM sampler runs outside ``ema_scope``.
- ``cond_stage_model.embedding.weight`` -> a plain ``nn.Embedding``; its last row is the null class
  (1000 in the real 1001 rows), and the UNet's context is ``emb(y)[:, None, :]``.

Schedule buffers, ``model_ema.*`` and the first stage's training loss (``first_stage_model.loss.*``) are ignored.

Caveat for OOD numbers: the VQ-f4 first stage was trained on OpenImages, which is also an OOD test set
(OpenImage-O), so reconstructions of that set are not a clean far-OOD signal.

Converted once, the parts load from a diffusers-style folder without the original checkpoint::

    python -m ood_lightning.detectors.diffguard.ldm.compvis_checkpoint \
        checkpoints/cin256-v2/model.ckpt checkpoints/ldm-cin256-v2
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, VQModel
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ood_lightning.errors import StateDictMismatchError
from ood_lightning.io import atomic_write, atomic_write_text, collect_state, load_checkpoint, raise_on_problems

UNET_PREFIX = "model.diffusion_model."
VQ_PREFIX = "first_stage_model."
CLASS_EMBEDDING_KEY = "cond_stage_model.embedding.weight"
_VQ_IGNORED = VQ_PREFIX + "loss."
_PARTS_JSON = "ldm_parts.json"
_EMBEDDING_FILE = "class_embedding.safetensors"

# diffusers ResnetBlock2D -> openaimodel ResBlock (in_layers = GroupNorm, SiLU, conv; out_layers adds dropout).
_UNET_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VQ_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# CompVis' AttnBlock uses 1x1 convolutions where diffusers' Attention has linear layers.
_VQ_CONV_AS_LINEAR = re.compile(r"(en|de)coder\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight")


@dataclass
class LatentDiffusionParts:
    """What DiffGuard's LDM path needs: the VQ autoencoder, the conditional UNet and the class embedding."""

    vae: VQModel
    unet: UNet2DConditionModel
    class_embedding: nn.Embedding
    null_class: int

    def context(self, labels: Tensor) -> Tensor:
        """Cross-attention context [B, 1, D] for class labels (``null_class``: unconditional), like ClassEmbedder."""
        return self.class_embedding(labels.to(self.class_embedding.weight.device))[:, None, :]

    def eps(self, z: Tensor, t: Tensor | int, labels: Tensor) -> Tensor:
        """The UNet's noise prediction for latents ``z`` at timesteps ``t`` conditioned on ``labels``."""
        return self.unet(z, t, encoder_hidden_states=self.context(labels)).sample

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LatentDiffusionParts:
        """Move all three parts (in place) and return self."""
        for module in (self.vae, self.unet, self.class_embedding):
            module.to(device=device, dtype=dtype)
        return self


def _indices(state: Mapping[str, Tensor], prefix: str) -> list[int]:
    """Sorted integers k of keys ``prefix + 'k.' + ...``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m[1]) for k in state if (m := pattern.match(k))})


def _require(state: Mapping[str, Tensor], keys: list[str]) -> None:
    if missing := [k for k in keys if k not in state]:
        raise ValueError("not a CompVis latent-diffusion class-conditional checkpoint (cin256-v2 layout with a VQ "
                         f"first stage, a cross-attention UNet and a class embedding): missing {missing}")


def unet_config(state: Mapping[str, Tensor], *, num_heads: int = 1, sample_size: int = 64) -> dict:
    """UNet2DConditionModel arguments read off the openaimodel keys; ``num_heads`` is not visible in the weights."""
    p = UNET_PREFIX
    _require(state, [f"{p}input_blocks.0.0.weight", f"{p}out.2.weight",
                     f"{p}middle_block.1.transformer_blocks.0.attn2.to_k.weight", f"{p}middle_block.1.proj_in.weight"])
    levels: list[list[tuple[int, bool]]] = [[]]
    for k in _indices(state, f"{p}input_blocks.")[1:]:
        block = f"{p}input_blocks.{k}."
        if f"{block}0.op.weight" in state:
            levels.append([])
        elif f"{block}0.out_layers.3.weight" in state:
            levels[-1].append((state[f"{block}0.out_layers.3.weight"].shape[0], f"{block}1.proj_in.weight" in state))
        else:
            raise ValueError(f"input block {block[len(p):-1]} is neither a ResBlock nor a Downsample")
    per_level = {len(level) for level in levels}
    if len(per_level) != 1 or 0 in per_level or any(len(set(level)) != 1 for level in levels):
        raise ValueError("UNet2DConditionModel needs the same number of res blocks per level, each level with one "
                         f"channel count and attention everywhere or nowhere; got (channels, attention) {levels}")
    channels = [level[0][0] for level in levels]
    attention = [level[0][1] for level in levels]
    if bad := [c for c in channels if c % num_heads]:
        raise ValueError(f"channel counts {bad} are not divisible by num_heads={num_heads}")
    mid = f"{p}middle_block.1."
    conv_in = state[f"{p}input_blocks.0.0.weight"]
    return dict(
        sample_size=sample_size,
        in_channels=conv_in.shape[1],
        out_channels=state[f"{p}out.2.weight"].shape[0],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        block_out_channels=channels,
        layers_per_block=per_level.pop(),
        cross_attention_dim=state[f"{mid}transformer_blocks.0.attn2.to_k.weight"].shape[1],
        transformer_layers_per_block=len(_indices(state, f"{mid}transformer_blocks.")),
        attention_head_dim=num_heads,  # diffusers reads this as the number of heads (its issue #2011)
        use_linear_projection=state[f"{mid}proj_in.weight"].ndim == 2,
        flip_sin_to_cos=True,  # openaimodel's timestep embedding is [cos, sin] with frequency shift 0
        freq_shift=0,
    )


def vq_config(state: Mapping[str, Tensor], *, sample_size: int = 256) -> dict:
    """VQModel arguments read off the CompVis VQModel (ldm.models.autoencoder) keys."""
    e, d = f"{VQ_PREFIX}encoder.", f"{VQ_PREFIX}decoder."
    _require(state, [f"{e}conv_in.weight", f"{e}conv_out.weight", f"{d}conv_in.weight", f"{d}conv_out.weight",
                     f"{VQ_PREFIX}quantize.embedding.weight"])
    levels = _indices(state, f"{e}down.")
    _require(state, [f"{e}down.{i}.block.0.conv2.weight" for i in levels or [0]])
    levels_with_attn = {k.split(".attn.")[0] for k in state if k.startswith((f"{e}down.", f"{d}up.")) and ".attn." in k}
    if attn := sorted(levels_with_attn):
        raise ValueError(f"attention inside {attn}: diffusers' VQModel has attention only in the mid blocks "
                         "(cin256-v2's first stage has attn_resolutions [])")
    latent_channels = state[f"{e}conv_out.weight"].shape[0]
    if state[f"{d}conv_in.weight"].shape[1] != latent_channels:
        raise ValueError(f"encoder output has {latent_channels} channels but the decoder takes "
                         f"{state[f'{d}conv_in.weight'].shape[1]} (a double_z / KL first stage is not a VQ one)")
    num_embeddings, embed_dim = state[f"{VQ_PREFIX}quantize.embedding.weight"].shape
    return dict(
        in_channels=state[f"{e}conv_in.weight"].shape[1],
        out_channels=state[f"{d}conv_out.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        block_out_channels=[state[f"{e}down.{i}.block.0.conv2.weight"].shape[0] for i in levels],
        layers_per_block=len(_indices(state, f"{e}down.0.block.")),
        latent_channels=latent_channels,
        sample_size=sample_size,
        num_vq_embeddings=num_embeddings,
        vq_embed_dim=embed_dim,
        scaling_factor=1.0,  # LDM's scale_factor: latents are used as they come out of quant_conv
        mid_block_add_attention=f"{e}mid.attn_1.q.weight" in state,
    )


def unet_official_name(ours: str, layers_per_block: int, up_attention: list[bool]) -> str:
    """diffusers UNet2DConditionModel name -> openaimodel name inside ``model.diffusion_model``."""
    n = layers_per_block
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"time_embedding\.linear_([12])\.(.+)", lambda m: f"time_embed.{2 * int(m[1]) - 2}.{m[2]}"),
        (r"conv_in\.(.+)", lambda m: f"input_blocks.0.0.{m[1]}"),
        (r"conv_norm_out\.(.+)", lambda m: f"out.0.{m[1]}"),
        (r"conv_out\.(.+)", lambda m: f"out.2.{m[1]}"),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"input_blocks.{1 + int(m[1]) * (n + 1) + int(m[2])}.0.{_UNET_RES[m[3]]}.{m[4]}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda m: f"input_blocks.{1 + int(m[1]) * (n + 1) + int(m[2])}.1.{m[3]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
         lambda m: f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"),
        (r"mid_block\.resnets\.(\d)\.(\w+)\.(.+)", lambda m: f"middle_block.{2 * int(m[1])}.{_UNET_RES[m[2]]}.{m[3]}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle_block.1.{m[1]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"output_blocks.{int(m[1]) * (n + 1) + int(m[2])}.0.{_UNET_RES[m[3]]}.{m[4]}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda m: f"output_blocks.{int(m[1]) * (n + 1) + int(m[2])}.1.{m[3]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
         lambda m: f"output_blocks.{int(m[1]) * (n + 1) + n}.{2 if up_attention[int(m[1])] else 1}.conv.{m[2]}"),
    ]
    return _apply(rules, ours)


def vq_official_name(ours: str, num_levels: int) -> str:
    """diffusers VQModel name -> CompVis VQModel name inside ``first_stage_model``."""
    def res(module: str) -> str:
        return "nin_shortcut" if module == "conv_shortcut" else module

    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"((?:en|de)coder\.conv_(?:in|out)|quant_conv|post_quant_conv|quantize\.embedding)\.(.+)",
         lambda m: f"{m[1]}.{m[2]}"),
        (r"(en|de)coder\.conv_norm_out\.(.+)", lambda m: f"{m[1]}coder.norm_out.{m[2]}"),
        (r"(en|de)coder\.mid_block\.resnets\.(\d)\.(\w+)\.(.+)",
         lambda m: f"{m[1]}coder.mid.block_{int(m[2]) + 1}.{res(m[3])}.{m[4]}"),
        (r"(en|de)coder\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)",
         lambda m: f"{m[1]}coder.mid.attn_1.{_VQ_ATTN[m[2]]}.{m[3]}"),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{res(m[3])}.{m[4]}"),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
         lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}"),
        # diffusers runs the decoder's levels deepest first; CompVis numbers them by resolution, up.0 the finest
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{res(m[3])}.{m[4]}"),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
         lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"),
    ]
    return _apply(rules, ours)


def _apply(rules: list[tuple[str, Callable[[re.Match], str]]], ours: str) -> str:
    for pattern, official in rules:
        if m := re.fullmatch(pattern, ours):
            return official(m)
    raise KeyError(f"no CompVis name known for diffusers parameter {ours} (a diffusers version with new modules?)")


def _collect(state: Mapping[str, Tensor], prefix: str, model: nn.Module, official: Callable[[str], str],
             conv_as_linear: re.Pattern | None = None, ignored: str | None = None) -> tuple[dict, list[str]]:
    """``model``'s state (float32 copies) out of ``state`` under ``prefix``; every problem as one line."""
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    return collect_state(
        state, shapes, lambda key: prefix + official(key),
        source_shape=lambda key, shape: (*shape, 1, 1) if conv_as_linear and conv_as_linear.fullmatch(key) else shape,
        take=lambda key, value: value.reshape(shapes[key]).to(torch.float32, copy=True), finite=True,
        foreign=lambda name: name.startswith(prefix) and not (ignored and name.startswith(ignored)))


def convert_ldm_state_dict(state: Mapping[str, Tensor], *, num_heads: int = 1, image_size: int = 256,
                           latent_size: int = 64, what: str = "the latent-diffusion state dict"
                           ) -> LatentDiffusionParts:
    """CompVis cin256-v2 state dict -> LatentDiffusionParts (float32, eval, no grad), every part loaded strictly.

    Raises StateDictMismatchError (a ValueError) listing the missing, unexpected, non-finite or wrong-shape keys
    when the weights (named `what` in the message) do not fit the architecture read off the keys.
    """
    _require(state, [CLASS_EMBEDDING_KEY])
    vq_cfg = vq_config(state, sample_size=image_size)
    unet_cfg = unet_config(state, num_heads=num_heads, sample_size=latent_size)
    with torch.device("meta"):
        vae, unet = VQModel(**vq_cfg), UNet2DConditionModel(**unet_cfg)
    levels = len(vq_cfg["block_out_channels"])
    up_attention = [t == "CrossAttnUpBlock2D" for t in unet_cfg["up_block_types"]]
    vae_state, problems = _collect(state, VQ_PREFIX, vae, lambda k: vq_official_name(k, levels),
                                   _VQ_CONV_AS_LINEAR, _VQ_IGNORED)
    unet_state, unet_problems = _collect(
        state, UNET_PREFIX, unet, lambda k: unet_official_name(k, unet_cfg["layers_per_block"], up_attention))
    problems += unet_problems
    table, dim = state[CLASS_EMBEDDING_KEY], unet_cfg["cross_attention_dim"]
    if not isinstance(table, Tensor) or table.ndim != 2 or table.shape[1] != dim:
        problems.append(f"wrong shape for {CLASS_EMBEDDING_KEY}: expected (n_classes, {dim}) to match the UNet's "
                        f"context_dim, got {tuple(getattr(table, 'shape', ()))}")
    problems += [f"unexpected {k}" for k in sorted(state)
                 if k.startswith("cond_stage_model.") and k != CLASS_EMBEDDING_KEY]
    raise_on_problems(problems, what, hint=f" read off its keys (VQModel {vq_cfg}; UNet2DConditionModel {unet_cfg})")
    vae.load_state_dict(vae_state, strict=True, assign=True)
    unet.load_state_dict(unet_state, strict=True, assign=True)
    class_embedding = nn.Embedding.from_pretrained(table.to(torch.float32, copy=True), freeze=True)
    return LatentDiffusionParts(vae=vae.eval().requires_grad_(False), unet=unet.eval().requires_grad_(False),
                                class_embedding=class_embedding.eval(), null_class=table.shape[0] - 1)


def load_ldm_checkpoint(path: str | Path, *, num_heads: int = 1, image_size: int = 256,
                        latent_size: int = 64) -> LatentDiffusionParts:
    """Read CompVis' ``model.ckpt`` (``{'state_dict': ...}``) without executing its pickle and convert it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"latent-diffusion checkpoint not found: {path}. DiffGuard's LDM path needs CompVis latent-diffusion's "
            "class-conditional ImageNet model \"cin256-v2\" (model.ckpt, linked from "
            "https://github.com/CompVis/latent-diffusion); put it in checkpoints/, e.g. "
            "checkpoints/cin256-v2/model.ckpt")
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: not a latent-diffusion checkpoint (expected a dict with a 'state_dict')")
    try:
        return convert_ldm_state_dict(state, num_heads=num_heads, image_size=image_size, latent_size=latent_size,
                                      what=str(path))
    except StateDictMismatchError:
        raise
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def save_ldm_parts(parts: LatentDiffusionParts, out_dir: str | Path) -> Path:
    """Write a diffusers-style folder: ``vqvae/``, ``unet/``, ``class_embedding.safetensors``, ``ldm_parts.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts.vae.save_pretrained(out / "vqvae")
    parts.unet.save_pretrained(out / "unet")
    table = parts.class_embedding.weight.detach().cpu().contiguous()
    atomic_write(out / _EMBEDDING_FILE, lambda f: f.write(save({"weight": table})))
    meta = {"null_class": parts.null_class, "num_classes": table.shape[0], "embedding_dim": table.shape[1]}
    atomic_write_text(out / _PARTS_JSON, json.dumps(meta, indent=2) + "\n")  # last: it marks the folder complete
    return out


def load_ldm_parts(folder: str | Path) -> LatentDiffusionParts:
    """Load a folder written by ``save_ldm_parts`` (float32, eval, no grad)."""
    folder = Path(folder)
    needed = [folder / "vqvae" / "config.json", folder / "unet" / "config.json", folder / _EMBEDDING_FILE,
              folder / _PARTS_JSON]
    if missing := [str(p) for p in needed if not p.is_file()]:
        raise FileNotFoundError(f"{folder} is not a converted latent-diffusion folder: missing {missing}. Create it "
                                "with: python -m ood_lightning.detectors.diffguard.ldm.compvis_checkpoint MODEL_CKPT "
                                "OUT_DIR")
    meta = json.loads((folder / _PARTS_JSON).read_text())
    table = load_file(folder / _EMBEDDING_FILE)["weight"]
    if tuple(table.shape) != (meta["num_classes"], meta["embedding_dim"]) or not 0 <= meta["null_class"] < len(table):
        raise ValueError(f"{folder}: class embedding {tuple(table.shape)} does not match {_PARTS_JSON} {meta}")
    kwargs = dict(local_files_only=True, use_safetensors=True, torch_dtype=torch.float32)
    vae = VQModel.from_pretrained(folder / "vqvae", **kwargs)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **kwargs)
    return LatentDiffusionParts(vae=vae.eval().requires_grad_(False), unet=unet.eval().requires_grad_(False),
                                class_embedding=nn.Embedding.from_pretrained(table, freeze=True).eval(),
                                null_class=int(meta["null_class"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ood_lightning.detectors.diffguard.ldm.compvis_checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert CompVis latent-diffusion's cin256-v2 model.ckpt into a diffusers-style folder\n"
                    "(vqvae/, unet/, class_embedding.safetensors, ldm_parts.json) that load_ldm_parts reads.",
        epilog="example:\n  python -m ood_lightning.detectors.diffguard.ldm.compvis_checkpoint "
               "checkpoints/cin256-v2/model.ckpt checkpoints/ldm-cin256-v2")
    parser.add_argument("checkpoint", type=Path, help="CompVis model.ckpt ({'state_dict': ...})")
    parser.add_argument("out_dir", type=Path, help="folder to write (created if needed)")
    parser.add_argument("--num-heads", type=int, default=1, help="attention heads of the UNet (cin256-v2: 1)")
    parser.add_argument("--image-size", type=int, default=256, help="image size recorded in the VQModel config")
    parser.add_argument("--latent-size", type=int, default=64, help="latent size recorded in the UNet config")
    args = parser.parse_args(argv)
    try:
        parts = load_ldm_checkpoint(args.checkpoint, num_heads=args.num_heads, image_size=args.image_size,
                                    latent_size=args.latent_size)
    except (FileNotFoundError, ValueError) as e:  # a user error: the message says what to do, no traceback
        parser.exit(1, f"error: {e}\n")
    save_ldm_parts(parts, args.out_dir)
    vq, un = parts.vae.config, parts.unet.config
    print(f"wrote {args.out_dir}: VQModel (f{2 ** (len(vq.block_out_channels) - 1)}, {vq.vq_embed_dim}-channel "
          f"latent, {vq.num_vq_embeddings} codes), UNet2DConditionModel (channels {list(un.block_out_channels)}, "
          f"{sum(p.numel() for p in parts.unet.parameters()) / 1e6:.1f}M parameters), "
          f"{parts.class_embedding.num_embeddings} classes (null class {parts.null_class})")


if __name__ == "__main__":
    main()
