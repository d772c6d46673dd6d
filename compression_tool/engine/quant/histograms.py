"""Per-layer weight and input-activation histograms (one PNG per Conv/Linear layer) for inspecting ranges."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from compression_tool.engine.quant.qmodules import InputSample, capture_inputs, quant_layer_names  # noqa: E402
from compression_tool.io.files import atomic_save_with  # noqa: E402

log = logging.getLogger(__name__)


def _panel(ax, values: torch.Tensor, lo: float, hi: float, title: str, bins: int) -> None:
    ax.hist(values.float().numpy(), bins=bins, log=True, color="tab:blue")
    ax.set_title(title, fontsize=9)
    ax.axvline(lo, color="tab:red", lw=0.8)
    ax.axvline(hi, color="tab:red", lw=0.8)
    ax.text(0.98, 0.95, f"min {lo:.4g}\nmax {hi:.4g}\nstd {float(values.float().std()):.3g}",
            transform=ax.transAxes, va="top", ha="right", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})


def layer_figure(name: str, weight: torch.Tensor, act: Optional[InputSample], bins: int = 100):
    """A figure with the weight histogram and (if given) the input-activation histogram of one layer."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    w = weight.detach().flatten()
    _panel(axes[0], w, float(w.min()), float(w.max()), f"{name} weights ({w.numel()})", bins)
    if act is not None:
        _panel(axes[1], act.values, act.lo, act.hi, f"{name} input activations (sample)", bins)
    else:
        axes[1].set_axis_off()
    fig.tight_layout()
    return fig


def _file_name(index: int, name: str) -> str:
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"


def save_histograms(model: nn.Module, batches: Sequence[torch.Tensor], out_dir: str | Path, bins: int = 100,
                    force: bool = True) -> List[Path]:
    """Write ``NNN_<layer>.png`` for every Conv/Linear layer into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    names = quant_layer_names(model)
    acts = capture_inputs(model, batches, names)
    paths = []
    for i, name in enumerate(tqdm(names, desc="histograms", leave=False)):
        fig = layer_figure(name, model.get_submodule(name).weight, acts.get(name), bins)
        try:
            paths.append(atomic_save_with(out / _file_name(i, name), lambda tmp: fig.savefig(tmp, dpi=90), force))
        finally:
            plt.close(fig)
    log.info("wrote %d histograms to %s", len(paths), out)
    return paths
