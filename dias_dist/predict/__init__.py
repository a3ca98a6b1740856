"""Prediction on a user's own series: ``readers`` (frame folders, DICOM, ``.npy``), ``model``
(checkpoint or MLflow URI -> network; one series -> probability map), ``writers`` (mask,
probability, overlay, summary, DICOM Segmentation; atomic per series), ``cli`` (``dias predict``)
and ``mlflow_model`` (the pyfunc model logged at the end of training).
"""
