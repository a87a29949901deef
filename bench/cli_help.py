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
