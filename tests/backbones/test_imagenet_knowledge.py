"""The pretrained weights really know ImageNet: top-1 on the 20 labelled sanity photos (>= 17/20)."""

import csv

import pytest

from headstart.backbones.inspect import inspect_backbone

pytestmark = pytest.mark.integration


def _score(result, rows) -> int:
    hits = 0
    for pred, row in zip(result["predictions"], rows):
        top1 = pred["top_k"][0][0].lower()
        accepted = [a.strip().lower() for a in row["acceptable_imagenet_labels"].split("|")]
        hits += any(a in top1 for a in accepted)
    return hits


@pytest.mark.parametrize(("name", "weights"), [
    ("efficientnet_lite0", None),
    ("mobilenet_v2", "weights/mobilenet_v2_imagenet_from_tflite.pth"),
])
def test_top1_on_imagenet_photos(shared, name, weights):
    photos = shared / "datasets" / "imagenet_photos"
    with open(photos / "labels.csv") as f:
        rows = list(csv.DictReader(f))[:20]
    result = inspect_backbone(name, weights=str(shared / weights) if weights else None,
                              images=[str(photos / r["file"]) for r in rows])
    assert result["in_features"] > 0 and result["stages"]
    score = _score(result, rows)
    # Measured: efficientnet_lite0 19/20, mobilenet_v2 (tflite conversion) 19/20 (see docs).
    assert score >= 17, f"{name}: {score}/20"
