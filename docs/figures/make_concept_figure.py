"""Draw docs/figures/concept_conv_vs_attention.png (see docs/ATTENTION.md).

A real photo (scikit-image's chelsea) downsampled so that every pixel is one
token whose feature vector is its colour. For two query pixels, the mixing
weights of a 3x3 convolution (fixed: the same pattern at every pixel, for
every image) next to those of parameter-free self-attention
(``botnet.layers.self_attention``: built from the input, over the whole image).

    PYTHONPATH=src python docs/figures/make_concept_figure.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from skimage import data
from torchvision.transforms.v2 import functional as TF

from botnet.layers import self_attention
from botnet.visualize.style import save_figure

OUT = Path(__file__).with_name("concept_conv_vs_attention.png")
TOKENS = (20, 30)  # the token grid (H, W)
QUERIES = {"eye": (7, 11), "fur": (17, 25)}  # (y, x) tokens
SHARPNESS = 4.0  # scales the unit colour vectors: logits = SHARPNESS^2 cos / sqrt(3)


def main() -> None:
    photo = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 255  # (3, 300, 451)
    small = TF.resize(photo, list(TOKENS), antialias=True)  # (3, H, W): one token per pixel
    # Standardised colours, unit length: the dot product is colour similarity.
    feats = (small - small.mean((1, 2), keepdim=True)) / small.std((1, 2), keepdim=True)
    feats = SHARPNESS * feats / feats.norm(dim=0, keepdim=True).clamp_min(1e-6)
    _, weights = self_attention(feats[None], return_weights=True)  # (1, N, N)
    height, width = TOKENS
    n = height * width
    shown = small.permute(1, 2, 0).numpy()

    # An (arbitrary) 3x3 kernel: what matters is that it is the same everywhere.
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16

    fig = Figure(figsize=(11.5, 6.4), layout="constrained")
    axes = fig.subplots(2, 3)
    ax = axes[0, 0]
    ax.imshow(shown, interpolation="nearest")
    ax.set_title(f"a pixel is a token: {height}x{width} = {n} tokens,\nits channels (here R, G, B) the feature vector",
                 fontsize=9)
    for name, (y, x) in QUERIES.items():
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=2))
        ax.annotate(name, (x, y), xytext=(8, -10), textcoords="offset points", color="white", fontsize=9,
                    fontweight="bold")
    ax = axes[1, 0]
    for k, (name, (y, x)) in enumerate(QUERIES.items()):
        ax.bar(np.arange(3) + 4 * k, small[:, y, x].numpy(), color=["tab:red", "tab:green", "tab:blue"])
    ax.set_xticks([1, 5], [f"token '{name}'" for name in QUERIES])
    ax.set_ylim(0, 1)
    ax.set_ylabel("channel value (R, G, B)")
    ax.set_title("two tokens' feature vectors", fontsize=9)

    conv_images, attn_images = [], []
    for y, x in QUERIES.values():
        conv = np.zeros(TOKENS, dtype=np.float32)
        ys, xs = slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2)
        conv[ys, xs] = kernel[ys.start - y + 1 : ys.stop - y + 1, xs.start - x + 1 : xs.stop - x + 1]
        conv_images.append(conv)
        attn_images.append(weights[0, y * width + x].reshape(TOKENS).numpy())
        gray = shown.mean(-1)
    for col, (name, (y, x)) in enumerate(QUERIES.items(), start=1):
        for row, (values, vmax, what) in enumerate(
            ((conv_images[col - 1], kernel.max(), "3x3 convolution at '{}':\nfixed weights, same at every pixel"),
             (attn_images[col - 1], attn_images[col - 1].max(),
              "self-attention at '{}': softmax(x_q . x_k)\nweights built from the input"))
        ):
            ax = axes[row, col]
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            image = ax.imshow(values, cmap="inferno", vmin=0, vmax=vmax, alpha=0.75, interpolation="nearest")
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=2))
            ax.set_title(what.format(name), fontsize=9)
            ax.set_axis_off()
            fig.colorbar(image, ax=ax, shrink=0.85).set_label("mixing weight", fontsize=8)
    axes[0, 0].set_axis_off()
    fig.suptitle("Where a pixel's output comes from: convolution vs self-attention (scikit-image 'chelsea')",
                 fontsize=11)
    save_figure(fig, OUT, dpi=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
