"""Keras image-classification pipeline: one module per DVC stage (see README)."""
import os as _os

# Nothing this project runs may phone home (see STACK_NOTES.md); set before mlflow or
# tensorflow are imported by any stage, test or command of the project.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("DO_NOT_TRACK", "true")
# TF 2.21 logs a harmless C++ "NodeDef mentions attribute use_unbounded_threadpool" ERROR
# every epoch; real TensorFlow failures still surface as Python exceptions.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
