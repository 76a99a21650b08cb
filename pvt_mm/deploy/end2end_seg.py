"""Whole mmseg segmentors as one graph: image in, label map out.

:class:`End2EndSegmentor` computes what ``EncoderDecoder.predict`` computes in ``whole`` test
mode for an image the pipeline has already resized: the data preprocessor
(:class:`~.common.Preprocess`: BGR -> RGB, normalisation, padding to the test ``size_divisor``
if any), backbone, neck and decode head, logits resized (bilinear, the head's ``align_corners``)
to the padded size, the padding cropped, argmax over classes. While exporting, mmseg's
``Upsample`` computes its output size in the graph (:meth:`End2EndSegmentor.traceable_patches`).

forward: (1, 3, H, W) float32 image (0-255, loaded channel order) -> ``label_map`` (1, H, W)
int64. Batch 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import End2EndModule, Patch, Preprocess
from .ops import dynamic_size, dynamo_exporting

SEG_OUTPUTS = ('label_map',)


def _upsample_forward(self, x: Tensor) -> Tensor:
    """mmseg's ``Upsample.forward`` with the output size computed in the graph: the original
    computes it as ``int(size * scale_factor)`` in Python, which tracing bakes in."""
    if self.size:
        return F.interpolate(x, self.size, None, self.mode, self.align_corners)
    if dynamo_exporting():  # symbolic ints: int(size * factor) as mmseg computes it
        size = [int(s * self.scale_factor) if isinstance(s, int) else
                torch.sym_int(s * self.scale_factor) for s in x.shape[2:]]
    else:
        h, w = dynamic_size(x)
        size = [(s.float() * self.scale_factor).floor().long() for s in (h, w)]
    return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)


class End2EndSegmentor(End2EndModule):
    """mmseg ``EncoderDecoder`` + preprocessing + logits resize and argmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        name = type(model).__name__
        if name != 'EncoderDecoder':
            raise ValueError(f'end-to-end export takes mmseg EncoderDecoder segmentors; {name} '
                             'is not supported')
        mode = model.test_cfg.get('mode', 'whole') if model.test_cfg else 'whole'
        if mode != 'whole':
            raise ValueError(f"test_cfg.mode {mode!r}: only 'whole' inference is exported "
                             '(sliding windows need a loop over crops)')
        if model.out_channels == 1:
            raise ValueError('binary segmentors (out_channels=1, sigmoid threshold) are not '
                             'exported')
        self.preprocess = Preprocess.from_model(model)
        self.model = model
        self.align_corners = bool(model.decode_head.align_corners)

    def traceable_patches(self) -> list[Patch]:
        """mmseg's ``Upsample`` (FPNHead's scale heads) with run-time sizes."""
        from mmseg.models.utils import Upsample
        return [(Upsample, 'forward', _upsample_forward)]

    def forward(self, image: Tensor) -> Tensor:
        height, width = dynamic_size(image)
        x = self.preprocess(image)
        logits = self.model.decode_head(self.model.extract_feat(x))
        logits = F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                               align_corners=self.align_corners)
        return logits[:, :, :height, :width].argmax(1)
