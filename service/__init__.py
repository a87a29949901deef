"""The serving half: a FastAPI app answering top-k from an artifact (no torch), an admin API that
queues budget jobs in SQLite, and a worker process that runs them (it may import torch).

Modules on the request path import numpy, onnxruntime, FastAPI and the torch-free parts of
:mod:`ciess_core`; only :mod:`service.jobs.runner` (run in the worker's job process) imports torch.
"""
