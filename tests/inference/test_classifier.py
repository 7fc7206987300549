"""The torch engine: TTA views, and the same labels from paths and from PIL images."""

import numpy as np
import pytest
from PIL import Image

import headstart


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    from conftest import make_synthetic_dataset

    root = tmp_path_factory.mktemp("pred")
    data = make_synthetic_dataset(root / "data")
    run = headstart.train(data, out=str(root / "run"), epochs=3, image_size=64, report=False)
    return headstart.load(run.run_dir), data


def test_tta_views_average_logits(clf):
    model, data = clf
    images = [Image.open(p).convert("RGB") for p in sorted((data / "test" / "red").iterdir())[:3]]
    plain = model.logits(images)
    flip = model.logits(images, tta="flip")
    import torch

    from headstart.data.transforms import eval_transform
    from headstart.runtime.preprocess import Preprocessing

    batch = torch.stack([eval_transform(Preprocessing.from_dict(model.manifest["preprocessing"]))(im) for im in images])
    with torch.inference_mode():
        expected = (model.net(batch) + model.net(batch.flip(-1))) / 2
    np.testing.assert_allclose(flip, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(flip, plain)
    assert model.logits(images, tta="five-crop").shape == plain.shape
    with pytest.raises(ValueError, match="five-crop"):
        model.logits(images, tta="rotate")


def test_paths_and_images_agree(clf):
    model, data = clf
    paths = sorted(str(p) for p in (data / "test" / "blue").iterdir())
    by_path = model.predict(paths)
    by_image = model.predict([Image.open(p) for p in paths])
    assert [r["label"] for r in by_path] == [r["label"] for r in by_image]
    assert model.predict(paths[0])[0]["path"] == paths[0]
