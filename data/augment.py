"""The paper's NYUv2 augmentation (Table 6, following CAGrad; LibMTL's ``--aug``): random scale-crop and flip.

Per sample, with its own generator (so the draw depends on the sample's seed only, not on the
worker, the rank or the batch — :mod:`fmtl.data.stream` seeds it from (seed, epoch, row)):

1. pick a scale s ∈ {1.0, 1.2, 1.5}, crop an ⌊H/s⌋ × ⌊W/s⌋ window at a uniform position and
   resize it back to H × W: image and normals bilinearly (align_corners=True), labels and depth
   by nearest neighbour, and divide the depth by s (a zoom brings the scene closer);
2. with probability 1/2 flip horizontally, negating the normals' x component.

As LibMTL's ``RandomScaleCrop`` (after MTAN issue 34). The resized normals are not
re-normalized (LibMTL does not either; the losses and metrics normalize the prediction only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict

__all__ = ["nyu_augment", "SCALES"]

SCALES = (1.0, 1.2, 1.5)


def _crop_resize(a: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int], mode: str) -> torch.Tensor:
    i, j, h, w = box
    win = a[None, :, i : i + h, j : j + w]
    if mode == "bilinear":
        return F.interpolate(win, size=size, mode="bilinear", align_corners=True)[0]
    return F.interpolate(win, size=size, mode="nearest")[0]


def nyu_augment(sample: TensorDict, generator: torch.Generator) -> TensorDict:
    """One sample ``{"x": [3, H, W], "y": {"segmentation": [H, W], "depth": [1, H, W], "normal"?: [3, H, W]}}``
    randomly scaled, cropped and flipped (module docstring); a new TensorDict.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> s = TensorDict({"x": torch.rand(3, 8, 10), "y": {"segmentation": torch.zeros(8, 10, dtype=torch.long),
        ...                 "depth": torch.ones(1, 8, 10), "normal": torch.rand(3, 8, 10)}}, [])
        >>> out = nyu_augment(s, torch.Generator().manual_seed(0))
        >>> out["x"].shape, out["y", "segmentation"].dtype, [round(v, 4) for v in out["y", "depth"].unique().tolist()]
        (torch.Size([3, 8, 10]), torch.int64, [0.6667])
    """
    x, y = sample["x"], sample["y"]
    size = (x.shape[-2], x.shape[-1])
    scale = SCALES[int(torch.randint(len(SCALES), (1,), generator=generator))]
    h, w = int(size[0] / scale), int(size[1] / scale)
    i = int(torch.randint(size[0] - h + 1, (1,), generator=generator))
    j = int(torch.randint(size[1] - w + 1, (1,), generator=generator))
    flip = bool(torch.rand((), generator=generator) < 0.5)
    box = (i, j, h, w)
    out = {"x": _crop_resize(x, box, size, "bilinear")}
    ys = {}
    for t in y.keys():
        v = y[t]
        if t == "segmentation":
            ys[t] = _crop_resize(v[None].float(), box, size, "nearest")[0].round().to(v.dtype)
        elif t == "depth":
            ys[t] = _crop_resize(v, box, size, "nearest") / scale
        elif t == "normal":
            ys[t] = _crop_resize(v, box, size, "bilinear")
        else:
            raise ValueError(f"nyu_augment does not know how to transform the target {t!r}")
    if flip:
        out["x"] = out["x"].flip(-1)
        ys = {t: v.flip(-1) for t, v in ys.items()}
        if "normal" in ys:
            ys["normal"] = torch.cat([-ys["normal"][:1], ys["normal"][1:]])
    out["y"] = TensorDict(ys, [])
    return TensorDict(out, [])
