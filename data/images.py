"""Image files decoded one at a time: a classification dataset that never holds its split in memory.

``ImageFiles(items, …)`` keeps only the list of ``(path, label)``; ``ds[rows]`` opens, converts
to RGB and resizes each image with Pillow when asked (in a DataLoader worker when streamed,
:mod:`fmtl.data.stream`), so memory is one batch of images, not a dataset (Office-Home at
224² would be 2.3 GB of uint8 decoded). Batches are ``{"x": float32 [B, 3, S, S], "y": long [B]}``,
ImageNet-normalized as torchvision's ``Normalize`` in LibMTL's Office loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from .base import Index, TaskInfo, as_index

__all__ = ["ImageFiles", "decode_image", "normalize_imagenet", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """One image as uint8 [size, size, 3]: RGB, resized bilinearly (LibMTL: ``Resize((224, 224))``).

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> f = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
        >>> Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(f)
        >>> decode_image(f, 4).shape
        (4, 4, 3)
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except OSError as e:
        raise OSError(f"cannot decode the image {path}: {e}") from None


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] → float32 (x/255 − μ)/σ with ImageNet's channel mean and std.

    Example:
        >>> white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
        >>> [round(v, 4) for v in normalize_imagenet(white).flatten().tolist()]
        [2.2489, 2.4286, 2.64]
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float() / 255.0 - mean) / std


class ImageFiles:
    """A single-task image classification dataset decoded per item (module docstring).

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> for i in range(3): Image.fromarray(np.full((6, 6, 3), 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
        >>> info = TaskInfo("classification", ("accuracy",), (True,), num_classes=2)
        >>> ds = ImageFiles([(d / f"{i}.png", i % 2) for i in range(3)], 4, "a", info)
        >>> b = ds[[2, 0]]
        >>> b["x"].shape, b["y"].tolist(), len(ds)
        (torch.Size([2, 3, 4, 4]), [0, 0], 3)
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, int]],
        image_size: int,
        task: str,
        info: TaskInfo,
        normalize: bool = True,
    ) -> None:
        self.items = [(Path(p), int(y)) for p, y in items]
        self.image_size, self.normalize = image_size, normalize
        self.tasks = (task,)
        self.task_info = {task: info}

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"ImageFiles(n={len(self)}, size={self.image_size}, task={self.tasks[0]!r})"

    def __getitem__(self, index: Index) -> TensorDict:
        rows = as_index(index, len(self)).tolist()
        arr = np.stack([decode_image(self.items[i][0], self.image_size) for i in rows]) if rows else \
            np.zeros((0, self.image_size, self.image_size, 3), dtype=np.uint8)  # fmt: skip
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)
        x = normalize_imagenet(x) if self.normalize else x.float().div_(255.0)
        y = torch.tensor([self.items[i][1] for i in rows], dtype=torch.long)
        return TensorDict({"x": x, "y": y}, [len(rows)])
