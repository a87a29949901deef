"""The versioned artifact: ragged embedding stores, id maps, seen items and ONNX scoring graphs.

Modules, by what they need:
- :mod:`~ciess_core.artifact.ragged`, :mod:`~ciess_core.artifact.manifest`,
  :mod:`~ciess_core.artifact.buckets`, :mod:`~ciess_core.artifact.files`,
  :mod:`~ciess_core.artifact.labels`, :mod:`~ciess_core.artifact.reader`,
  :mod:`~ciess_core.artifact.summary`: numpy and scipy.
- :mod:`~ciess_core.artifact.scorer`: plus onnxruntime (what the service needs, no torch).
- :mod:`~ciess_core.artifact.graphs`: builds the ONNX graphs (needs ``onnx``).
- :mod:`~ciess_core.artifact.export`: model or run directory -> artifact (needs torch).

Nothing is imported here, so that importing one of them never pulls the heavier ones.
"""
