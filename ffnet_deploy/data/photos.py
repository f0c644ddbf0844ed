"""Natural-photo inputs for models without trained weights: crops of scikit-learn's two sample photos.

``ffnet-deploy bench`` without a checkpoint times random weights; with the raw initialisation their activation ranges
are degenerate, so :func:`photo_bn_checkpoint` re-estimates the BatchNorm statistics on photo crops, and
:func:`photo_crops` writes a calibration folder of other crops. Nothing is downloaded: the photos ship with
scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's sample photos (``china.jpg``, ``flower.jpg``: uint8 HxWx3), read as ``load_sample_images``
    reads them (every ``.jpg`` of its images folder, by name, decoded by Pillow), without importing scikit-learn; its
    loader where that folder is not found."""
    from PIL import Image

    from ffnet_deploy.data.files import sklearn_datasets_path

    folder = sklearn_datasets_path("images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.match("*.jpg")) if folder is not None else []
    if not paths:
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images)
    photos = []
    for path in paths:
        with Image.open(path) as image:
            photos.append(np.asarray(image))
    return photos


def photo_crops(folder: Path, count: int, size: int, seed: int) -> Path:
    """``count`` random square crops (``size`` px, JPEG) of scikit-learn's two sample photos.

    Args:
        folder: Where the crops are written (``crop0000.jpg``, ...); created if missing.
        count: Number of crops.
        size: Side of every crop, in pixels.
        seed: Seed of the crop positions and sizes; the same seed writes the same files.

    Returns:
        ``folder``.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size // 2, min(photo.shape[:2])))
        y, x = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (0, 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
        crop.save(folder / f"crop{i:04d}.jpg", quality=92)
    return folder


def photo_bn_checkpoint(variant: str, path: Path, resolution: int = 256, batches: int = 16, seed: int = 0) -> Path:
    """An official-format checkpoint (``{"model": state_dict}``) of random ``variant`` weights whose BatchNorm
    statistics are re-estimated on random photo crops, so that activations have the ranges of a trained model.

    Args:
        variant: The FFNet variant.
        path: The checkpoint file to write.
        resolution: Side of the photo crops the statistics are taken on.
        batches: Batches of 8 crops run through the model in training mode.
        seed: Seeds the weights and the crop positions.

    Returns:
        ``path``.
    """
    import torch

    from ffnet_deploy.models.ffnet import create_ffnet

    torch.manual_seed(seed)
    model = create_ffnet(variant)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    photos = [torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255 for p in sample_photos()]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for b in range(batches):
            crops = []
            for i in range(8):
                p = photos[(b + i) % len(photos)]
                y = int(torch.randint(0, p.shape[1] - resolution + 1, (1,), generator=g))
                x = int(torch.randint(0, p.shape[2] - resolution + 1, (1,), generator=g))
                crops.append((p[:, y:y + resolution, x:x + resolution] - mean) / std)
            model(torch.stack(crops))
    model.eval()
    torch.save({"model": model.state_dict()}, path)
    return path
