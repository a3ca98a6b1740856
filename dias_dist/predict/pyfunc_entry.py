"""The MLflow "model from code" file of the logged pyfunc model (copied into the model folder):
the model is the importable class, never a pickled object."""
from mlflow.models import set_model

from dias_dist.predict.pyfunc_model import DiasSegmenter

set_model(DiasSegmenter())
