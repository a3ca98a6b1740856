"""The pyfunc class of the logged model (``dias_dist.predict.mlflow_model`` logs it), its
signature and its input example."""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from dias_dist.run import checkpoint
from dias_dist.predict.model import TrainedModel, from_payload, series_probability


class DiasSegmenter(mlflow.pyfunc.PythonModel):
    """pyfunc model: float (T, H, W) series (or a list of them) -> vessel probability float32 (H, W) (or a list).

    Frames are any positive linear scale of the intensities (e.g. 8-bit values or values / 255):
    they are z-scored per series as in training. params: ``tile``, ``stride``, ``batch_size`` of the
    sliding window (defaults: the training config's ``eval`` section; tile 0 = whole image),
    ``device`` ("cpu" unless given). The signature describes one series: MLflow's schema check
    admits one array per ``PyFuncModel.predict`` call, so a list of series of different sizes goes
    through ``loaded.unwrap_python_model().predict(None, [series, ...])``.
    """

    def load_context(self, context) -> None:
        path = context.artifacts["checkpoint"]
        self.model: TrainedModel = from_payload(checkpoint.load(path), path)

    def predict(self, context, model_input, params: dict | None = None):
        params = dict(params or {})
        options = {key: int(params[key]) for key in ("tile", "stride", "batch_size")
                   if params.get(key) not in (None, -1)}
        device = params.get("device") or "cpu"
        single = not isinstance(model_input, (list, tuple))
        series = [model_input] if single else list(model_input)
        maps = [series_probability(self.model, np.asarray(frames, dtype=np.float64), device=device, **options)
                for frames in series]
        return maps[0] if single else maps


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    params = ParamSchema([ParamSpec("tile", "long", -1), ParamSpec("stride", "long", -1),
                          ParamSpec("batch_size", "long", -1), ParamSpec("device", "string", "cpu")])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]), params=params)


def input_example(num_frames: int = 4, size: int = 64) -> np.ndarray:
    """A small synthetic series float32 (T, size, size) in [0, 1]: bright background and one dark
    vessel whose contrast rises over the frames."""
    rows, cols = np.mgrid[0:size, 0:size]
    vessel = np.exp(-((rows - cols * 0.5 - size / 4) / 2.0) ** 2)
    contrast = np.linspace(0.0, 0.6, num_frames)[:, None, None]
    return (0.8 - contrast * vessel[None]).astype(np.float32)
