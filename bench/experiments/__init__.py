"""Experiments on the core's public API: the settings the reports measured and that did not pay.

Each module plugs into one extension point of ``ciess_core`` instead of a flag of the product:

- :mod:`.exploration`: the exploration ablation of spec §8 (OU and uniform noise, the search
  without the random walk), as :class:`~ciess_core.search.exploration.Exploration` variants for
  ``SearchHooks.exploration``.
- :mod:`.penalty`: λ steered towards one budget per phase of episodes, a
  ``SearchHooks.penalty`` schedule.
- :mod:`.evaluators`: the paper's evaluator, a model trained from scratch per candidate, for
  ``run_pipeline(evaluator_factory=...)``.
- :mod:`.protocols`: the authors' reference protocol (the checkpoint picked on test), a
  :class:`~ciess_core.runs.RunProtocol` for ``RunSpec.protocol`` and ``PipelineSpec.protocol``.
- :mod:`.layouts`: the artifact scorer over one zero-padded dense matrix, the baseline of
  ``bench/artifact.py``.

The benchmark scripts import this package as ``experiments`` (they put ``bench/`` on the path);
the tests import it as ``bench.experiments``.
"""
