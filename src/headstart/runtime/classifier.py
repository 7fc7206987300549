"""The one classifier interface, shared by every engine (torch, ONNX Runtime): an engine supplies `logits`,
the rest (classes, calibration, the threshold, the result format) is defined here once. No torch."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
from PIL import Image

from headstart.artifact import ArtifactError
from headstart.runtime.preprocess import Preprocessing, preprocess_batch
from headstart.runtime.results import Inputs, predict_images

__all__ = ["BatchEngine", "Classifier", "checked_manifest"]


def checked_manifest(meta: dict, source: str) -> dict:
    """What every engine reads from an export's metadata, normalized: preprocessing, temperature, threshold and
    classes; anything missing or malformed is an ArtifactError naming `source`."""
    try:
        meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"]).to_dict()
        meta["temperature"], meta["threshold"] = float(meta["temperature"]), float(meta["threshold"])
        meta["classes"] = [str(c) for c in meta["classes"]]
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{source}: damaged headstart metadata ({type(exc).__name__}: {exc})") from exc
    return meta


class Classifier(abc.ABC):
    """A trained classifier: labels, calibrated confidences and top-k from image paths or PIL images.

    `manifest` holds what the model was saved with (classes, preprocessing, temperature, threshold, backbone).
    """

    manifest: dict

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.5))

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    @abc.abstractmethod
    def logits(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Logits [N, classes] for decoded RGB images, before temperature."""

    def predict(self, inputs: Inputs, *, top_k: int = 3, threshold: float | None = None, batch_size: int = 32,
                **options) -> list[dict]:
        """One dict per input: {"path", "label", "confidence", "top_k"}, or {"path", "error"} for a bad file.

        The label is "unsure" when the calibrated confidence is below the threshold. `options` go to the
        engine's `logits` (the torch engine's `tta`).
        """
        return predict_images(inputs, lambda images: self.logits(images, batch_size, **options),
                              classes=self.classes, temperature=self.temperature, top_k=top_k,
                              threshold=self.threshold if threshold is None else threshold,
                              reduce_to=self.preprocessing.reduce_to)


class BatchEngine(Classifier):
    """A torch-free engine (ONNX Runtime, OpenVINO): the numpy preprocessing here, `run` on the engine."""

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an already preprocessed float32 NCHW batch."""

    def logits(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Raw logits [N, classes] for decoded RGB images."""
        spec = self.preprocessing
        out = [self.run(preprocess_batch(images[start:start + batch_size], spec))
               for start in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)
