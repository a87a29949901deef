"""The benchmark scripts' one ``--help`` style: descriptions as written, defaults where they exist."""

from __future__ import annotations

import argparse


class DefaultsHelp(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps a description's line breaks and appends each option's default to its help.

    No default is shown where there is none to show (None, a flag's False, an empty string or
    list) or where the help already states it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        unset = default is None or default is False or default == "" or default == []
        if unset or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_pipeline_arguments(parser: argparse.ArgumentParser, units: str) -> None:
    """The pipeline flags of the executor benchmarks (``scale_out.py``, ``sensitivity.py``):
    where and how many ``units`` run at a time, the dataset, backbone, budgets and recipe."""
    from ciess_core.executors import DEFAULT_EXECUTOR, DEFAULT_WORKERS, EXECUTORS

    parser.add_argument("--executor", choices=EXECUTORS, default=DEFAULT_EXECUTOR)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"{units} at a time")
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--backbone", default="lightgcn")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR)")
    parser.add_argument("--config", help="recipe file, for dry runs (rows say 'custom')")
