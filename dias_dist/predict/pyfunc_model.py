"""The pyfunc class of the logged model (``dias_dist.predict.mlflow_model`` logs it), its
signature and its input example."""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from dias_dist.run import checkpoint
from dias_dist.predict.model import TrainedModel, from_payload, series_probability


class DiasSegmenter(mlflow.pyfunc.PythonModel):
    """pyfunc model: a (T, H, W) series (or a list of them) -> vessel probability float32 (H, W) (or a list).

    Frames: ``INPUT_DTYPES`` (uint8 and uint16 as DSA systems store them, float32 / float64 at any
    positive linear scale of the intensities, e.g. values / 255): they are z-scored per series as in
    training, so uint8 frames and the same frames / 255 give one map. Other integer dtypes are taken
    when every value lies in 0..65535: that is what uint8 / uint16 frames become after a JSON round
    trip (``mlflow models serve``, and MLflow's check of the input example when the model is logged,
    read them back as int64). Anything else (a colour axis, 2-D, bool, negative or larger integers) is
    a ValueError naming the dtype and shape. params: ``tile``, ``stride``, ``batch_size`` of the
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
        maps = [series_probability(self.model, checked_frames(frames), device=device, **options) for frames in series]
        return maps[0] if single else maps


INPUT_DTYPES = ("uint8", "uint16", "float32", "float64")
INPUT_DESCRIPTION = ("frames (T, H, W) of one series, dtype uint8, uint16, float32 or float64 (any positive linear "
                     "scale: z-scored per series; other integer dtypes, as JSON gives them, with values in 0..65535); "
                     "or a list of such series")
JSON_INTEGER_MAX = 65535  # uint16, the widest integer frames DSA systems store


def checked_frames(frames) -> np.ndarray:
    """float64 (T, H, W) of a series given as one of ``INPUT_DTYPES``; ValueError otherwise."""
    array = np.asarray(frames)
    as_json = array.dtype.kind in "iu" and array.dtype.name not in INPUT_DTYPES
    if (array.dtype.name not in INPUT_DTYPES and not as_json) or array.ndim != 3:
        raise ValueError(f"dias model input must be {INPUT_DESCRIPTION}; got dtype {array.dtype} shape {array.shape}")
    if as_json and array.size and (array.min() < 0 or array.max() > JSON_INTEGER_MAX):
        raise ValueError(f"dias model input must be {INPUT_DESCRIPTION}; got dtype {array.dtype} shape {array.shape} "
                         f"with values {array.min()}..{array.max()}")
    return array.astype(np.float64)


def signature():
    """The model's signature: output float32 (H, W), the sliding-window params, and the input left open:
    MLflow's tensor schema admits exactly one dtype and would turn away the uint8 / uint16 frames DSA
    systems store, so what the input may be is said in ``metadata()`` (``input``) and shown by the
    uint8 ``input_example``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    params = ParamSchema([ParamSpec("tile", "long", -1), ParamSpec("stride", "long", -1),
                          ParamSpec("batch_size", "long", -1), ParamSpec("device", "string", "cpu")])
    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]), params=params)


def metadata() -> dict:
    """What the model expects, for the MLflow model's metadata."""
    return {"input": INPUT_DESCRIPTION, "input_dtypes": list(INPUT_DTYPES), "input_shape": [-1, -1, -1],
            "output": "vessel probability float32 (H, W) in [0, 1]"}


def input_example(num_frames: int = 4, size: int = 64) -> np.ndarray:
    """A small synthetic series uint8 (T, size, size), as DSA frames are stored: bright background and
    one dark vessel whose contrast rises over the frames."""
    rows, cols = np.mgrid[0:size, 0:size]
    vessel = np.exp(-((rows - cols * 0.5 - size / 4) / 2.0) ** 2)
    contrast = np.linspace(0.0, 0.6, num_frames)[:, None, None]
    return np.round((0.8 - contrast * vessel[None]) * 255).astype(np.uint8)
