"""Export a trained LFDN run to the released code's checkpoint layout (checkpoint-0.pth, checkpoint-last.pth).

    python -m ood_lightning.detectors.lfdn.export RUN/checkpoints/last.ckpt OUT_DIR
"""
from __future__ import annotations

import argparse

from ood_lightning.detectors.lfdn.checkpoint import save_official_checkpoint
from ood_lightning.io import load_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a Lightning checkpoint of LFDNDetector (e.g. last.ckpt)")
    parser.add_argument("out_dir", help="folder for checkpoint-0.pth and checkpoint-last.pth")
    args = parser.parse_args(argv)
    print("\n".join(export(args.checkpoint, args.out_dir)))


def export(checkpoint: str, out_dir: str) -> list[str]:
    """The trained weights and EMA go to checkpoint-last; only the first epoch's EMA is kept, so checkpoint-0
    carries it as both its raw and EMA weights (the LR score reads only the EMA). Each file records the EMA update
    count of its own moment, as the released code's files do (checkpoint-0: the count after the first epoch)."""
    ckpt = load_checkpoint(checkpoint)
    state = ckpt["state_dict"]
    nets = {}
    for name in ("net", "ema", "ema_first"):
        sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        if not sub:
            raise ValueError(f"{checkpoint} has no '{name}.*' weights: is it an LFDNDetector checkpoint?")
        nets[name] = sub
    if "ema_first_updates" not in state:
        raise ValueError(f"{checkpoint} does not record the EMA update count after the first epoch "
                         "('ema_first_updates'), which checkpoint-0.pth carries: it was written before "
                         "LFDNDetector recorded that count. Train the run again to export it.")
    paths = [f"{out_dir}/checkpoint-0.pth", f"{out_dir}/checkpoint-last.pth"]
    save_official_checkpoint(paths[0], nets["ema_first"], nets["ema_first"], epoch=0,
                             num_updates=int(state["ema_first_updates"]))
    save_official_checkpoint(paths[1], nets["net"], nets["ema"], epoch=ckpt["epoch"],
                             num_updates=int(state["ema_updates"]))
    return paths

if __name__ == "__main__":
    main()
