"""The names of the executors that run the pipeline's independent units (no imports, so that the
command line can offer them without loading torch); the runners are in
:mod:`ciess_core.search.parallel`."""

EXECUTORS = ("local", "processes", "ray")
"""``local``: this process, one unit after another; ``processes``: spawned local processes;
``ray``: Ray tasks on a local or remote cluster."""

DEFAULT_EXECUTOR = "processes"

DEFAULT_WORKERS = 2
"""``ciess search``'s units at a time: two, each with half of this process's threads."""
