"""U-Net++ deep supervision (``model.deep_supervision``): a loss on every nested decoder output.

U-Net++ (Zhou et al. 2018, https://arxiv.org/abs/1807.10165) stacks nested decoder
nodes at the top resolution, X^{0,1} .. X^{0,4}; with deep supervision each gets its
own 1x1 segmentation head and training averages the loss over those outputs, so the
shallow sub-networks learn to segment on their own and give the deep ones better
gradients. Prediction keeps the final output only.

In smp 0.6.0's ``UnetPlusPlusDecoder`` the blocks are named ``x_{i}_{j}``: ``j`` is the
resolution (0 = the deepest skip, ``depth - 1`` = the encoder's stride-2 features) and
the nodes of one resolution run from ``x_{j}_{j}`` (encoder features only) to
``x_0_{j}`` (densest). The paper's top row is therefore smp's ``x_{depth-1}_{depth-1}``
.. ``x_0_{depth-1}`` at stride 2 (smp's ``x_0_j`` for other ``j`` are the last nodes
of coarser resolutions, not nested outputs); smp then upsamples ``x_0_{depth-1}`` with
the block ``x_0_{depth}`` into its own 3x3 segmentation head: that is the final output,
the paper's X^{0,4}, left exactly as smp computes it. The other top-row nodes get the
extra 1x1 heads, whose logits are upsampled (bilinear) to the input size like the
final output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import initialization as init
from torch import Tensor, nn

__all__ = ["DeepSupervisedUnetPlusPlus", "supervised_loss"]


class DeepSupervisedUnetPlusPlus(smp.UnetPlusPlus):
    """smp's U-Net++ plus one 1x1 head per nested top-row decoder node.

    A subclass, not a wrapper around the model, for three reasons:

    * the state dict is smp's (same keys, same ``encoder.``/``decoder.`` prefixes) plus
      ``aux_heads.*``, so a checkpoint saves the extra heads and ``load_model`` rebuilds
      this class from the checkpoint's config and loads it strictly;
    * in eval mode ``forward`` *is* ``smp.UnetPlusPlus.forward``: validation, the first
      pass, out-of-fold and prediction get one logits tensor, exactly as from a plain
      model, with no change to ``load_model`` or :mod:`pipeline.predict`;
    * the smp part is built first with the same arguments, so with the same seed its
      weights equal those of a plain ``smp.UnetPlusPlus`` (the heads come after).

    In train mode ``forward`` returns :meth:`outputs`: a list of logits at the input
    size, nested outputs first and smp's final output last. The nested nodes are read
    with forward hooks during smp's own forward pass instead of re-running the dense
    decoder here, so the final output is smp's computation bit for bit and the only smp
    internal relied on is the block naming (checked when the model is built).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        depth = self.decoder.depth
        top = depth - 1  # the stride-2 resolution: the paper's row X^{0,*}
        self.nested_nodes = tuple(f"x_{i}_{top}" for i in range(top, 0, -1))  # X^{0,1} .. X^{0,depth-1}
        missing = [name for name in self.nested_nodes if name not in self.decoder.blocks]
        if missing or f"x_0_{top}" not in self.decoder.blocks:
            raise ValueError(f"deep supervision: smp's UnetPlusPlusDecoder has no block(s) {missing}")
        empty = [name for name in self.nested_nodes if self.decoder.blocks[name].out_channels == 0]
        if empty:
            raise ValueError("deep supervision: the encoder has no stride-2 features for the nested outputs")
        classes = self.segmentation_head[0].out_channels
        self.aux_heads = nn.ModuleDict(
            {name: nn.Conv2d(self.decoder.blocks[name].out_channels, classes, kernel_size=1)
             for name in self.nested_nodes}
        )
        init.initialize_head(self.aux_heads)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # type: ignore[override]
        """Eval mode: smp's logits tensor. Train mode: :meth:`outputs` (a list)."""
        if not self.training:
            return super().forward(x)
        return self.outputs(x)

    def outputs(self, x: Tensor) -> list[Tensor]:
        """Logits of every nested output, shallowest first, then smp's final logits; all at the input size."""
        nodes: dict[str, Tensor] = {}

        def keep(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
            def hook(module: nn.Module, args: Any, output: Tensor) -> None:
                nodes[name] = output
            return hook

        handles = [self.decoder.blocks[name].register_forward_hook(keep(name)) for name in self.nested_nodes]
        try:
            final = super().forward(x)
        finally:
            for handle in handles:
                handle.remove()
        size = x.shape[-2:]
        nested = [
            F.interpolate(self.aux_heads[name](nodes[name]), size=size, mode="bilinear", align_corners=False)
            for name in self.nested_nodes
        ]
        return [*nested, final]


def supervised_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Tensor | Sequence[Tensor], target: Tensor
) -> Tensor:
    """``loss_fn(outputs, target)``; for a list of outputs (deep supervision) the mean over them."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs, target)
    losses = [loss_fn(out, target) for out in outputs]
    return torch.stack(losses).mean()
