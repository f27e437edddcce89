"""pix2pix-style networks: a U-Net generator and a conditional PatchGAN discriminator.

Generator
---------
The pix2pix U-Net (Isola et al. 2017): ``depth`` encoder steps of a 4×4 stride-2 convolution
(batch norm except on the first, LeakyReLU 0.2), then ``depth`` decoder steps of a 4×4
stride-2 transposed convolution (batch norm and ReLU except on the last) with the encoder
features of the same level concatenated (skip connections). Departures, each for a reason:

- Small defaults (depth 4, 16 base channels, capped at 128) so it trains on a CPU; the
  original uses depth 8 and 64 channels for 256×256 images.
- No ``tanh`` and no [-1, 1] scaling: the inputs are linear, sky-subtracted images in units
  of the frame's noise σ (:mod:`pausdenoise.gan.pairs`), whose sources span thousands of σ;
  a linear output keeps fluxes unbiased after the inverse scaling.
- ``residual=True`` (default) predicts the *difference* stack − single and adds the input
  back: the mapping is close to the identity, which a small net learns much faster.
- Dropout is optional (``dropout=0`` by default) and inactive in ``eval()`` mode, and batch
  norm uses its running statistics in ``eval()`` mode — inference is deterministic and a
  per-pixel affine map per channel, so tiled inference equals whole-image inference.

Like :class:`pausdenoise.n2v.unet.UNet`, inputs must be multiples of ``2**depth`` (use
:func:`predict_array`, which pads by reflection and crops), and the receptive field is
computed from the layer list (:meth:`Generator.receptive_field_radius`), never typed in.

Discriminator
-------------
The conditional PatchGAN: it sees ``concat(single, target or generated)`` and outputs one
logit per overlapping patch. With ``n_layers=3`` each logit sees a 70×70 px patch (the
"70×70 PatchGAN"); :meth:`Discriminator.patch_size` computes it from the layers.
"""

from __future__ import annotations

import torch
from torch import nn

from pausdenoise.gan.config import (  # the config classes are also importable from here
    DiscriminatorConfig,
    GeneratorConfig,
)
from pausdenoise.n2v.unet import predict_array as predict_array  # one primitive, re-exported

# --------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """pix2pix U-Net generator (see the module docstring)."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        cfg = self.config
        ch = cfg.channels()
        self.down = nn.ModuleList()
        c_prev = cfg.in_channels
        for level, c in enumerate(ch):
            layers: list[nn.Module] = [nn.Conv2d(c_prev, c, 4, stride=2, padding=1)]
            if cfg.batch_norm and level > 0:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            c_prev = c
        self.up = nn.ModuleList()
        for level in reversed(range(cfg.depth)):
            # Input: the deepest features, or the previous decoder output + the skip.
            c_in = ch[-1] if level == cfg.depth - 1 else 2 * ch[level]
            if level == 0:
                self.up.append(nn.ConvTranspose2d(c_in, cfg.out_channels, 4, 2, 1))
                continue
            c_out = ch[level - 1]
            layers = [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map single-exposure inputs to the stack estimate.

        Parameters
        ----------
        x : Tensor (N, C, H, W)
            Normalised inputs (sky σ units); ``H, W`` multiples of ``2**depth``.

        Returns
        -------
        Tensor (N, out_channels, H, W)
            The estimate, in the inputs' units.

        Raises
        ------
        ValueError
            If ``H`` or ``W`` is not a multiple of ``2**depth`` (use :func:`predict_array`).
        """
        m = self.config.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of 2**depth = {m}; "
                "use pausdenoise.gan.models.predict_array"
            )
        skips = []
        h = x
        for down in self.down:
            h = down(h)
            skips.append(h)
        h = skips.pop()
        for i, up in enumerate(self.up):
            if i > 0:
                h = torch.cat([h, skips.pop()], dim=1)
            h = up(h)
        return x + h if self.config.residual else h

    # -- receptive field -----------------------------------------------------------------

    def layer_path(self) -> list[tuple[int, int, int]]:
        """List the layers on the deepest input→output path.

        A 4×4 stride-2 transposed convolution (padding 1) makes each output pixel from 2
        input pixels at offsets (−1, 0) or (0, +1) low-resolution pixels around its centre,
        depending on its parity: entered as an up-sampling by 2 with a kernel of 3
        (conservative), as unet.py does for bilinear up-sampling.

        Returns
        -------
        list of (int, int, int)
            ``(kernel, stride, upsample)`` per layer, input to output.
        """
        path: list[tuple[int, int, int]] = []
        for down in self.down:
            for layer in down.modules():
                if isinstance(layer, nn.Conv2d):
                    path.append((layer.kernel_size[0], layer.stride[0], 1))
        for up in self.up:
            for layer in up.modules():
                if isinstance(layer, nn.ConvTranspose2d):
                    k, s = layer.kernel_size[0], layer.stride[0]
                    path.append((2 * (-(-k // s) // 2) + 1, 1, s))
        return path

    def receptive_field_radius(self) -> int:
        """Return the largest input→output pixel distance through which information flows.

        The same recursion as :meth:`pausdenoise.n2v.unet.UNet.receptive_field_radius`
        (size grows by ``(k - 1) · jump``; a stride multiplies ``jump``, an up-sampling
        divides it), plus the grid period ``2**depth`` to cover every pixel phase.

        Returns
        -------
        int
            The radius in px.
        """
        size, jump = 1.0, 1.0
        for k, stride, up in self.layer_path():
            size += (k - 1) * jump
            jump = jump * stride / up
        return int(size // 2) + self.config.size_multiple

    def halo(self) -> int:
        """Return the halo for tiled inference.

        Returns
        -------
        int
            The receptive-field radius in px rounded up to a multiple of ``2**depth``
            (tile origins stay on the stride-2 grid).
        """
        m = self.config.size_multiple
        return -(-self.receptive_field_radius() // m) * m


# --------------------------------------------------------------------------- discriminator


class Discriminator(nn.Module):
    """Conditional PatchGAN: logits ``(N, 1, h, w)`` for ``(condition, image)`` pairs."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiscriminatorConfig()
        cfg = self.config
        layers: list[nn.Module] = [
            nn.Conv2d(2 * cfg.in_channels, cfg.base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        c_prev = cfg.base_channels
        for i in range(1, cfg.n_layers + 1):
            c = min(cfg.base_channels * 2**i, cfg.max_channels)
            stride = 2 if i < cfg.n_layers else 1
            layers.append(nn.Conv2d(c_prev, c, 4, stride=stride, padding=1))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_prev = c
        layers.append(nn.Conv2d(c_prev, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Score ``image`` (target or generated) given ``condition`` (the single exposure).

        Parameters
        ----------
        condition : Tensor (N, C, H, W)
            The normalised single exposure.
        image : Tensor (N, C, H, W)
            The target or the generated image, same units.

        Returns
        -------
        Tensor (N, 1, h, w)
            One logit per overlapping patch (real > 0 > fake).
        """
        return self.net(torch.cat([condition, image], dim=1))

    def patch_size(self) -> int:
        """Return the side of the input patch that one output logit sees.

        Returns
        -------
        int
            The side in px (70 for ``n_layers=3``).
        """
        size, jump = 1, 1
        for layer in self.net.modules():
            if isinstance(layer, nn.Conv2d):
                size += (layer.kernel_size[0] - 1) * jump
                jump *= layer.stride[0]
        return size
