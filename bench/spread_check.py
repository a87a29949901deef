"""Which part of a searched assignment's spread generalises: the run's supernet scores each
budget's chosen sizes, with each side's spread shrunk, on three sets of interactions.

- ``search``: the validation interactions the search was rewarded on (with a held-out
  selection share, only its part);
- ``held-out``: the validation part the search never saw (only with ``--selection-share``);
- ``test``: the test set, ranked with train and validation excluded. A diagnostic only: no
  choice in the pipeline looks at it.

A spread that scores higher than equal sizes on the search's interactions but not on
interactions the search never saw fits noise. Called as ``python bench/ciess.py spread-check``
with a `run` folder's arguments; prints a markdown table (N@20) and writes it next to the run.
"""

from __future__ import annotations

from pathlib import Path

from ciess_core.data import DatasetSplit, Phase
from ciess_core.search.evaluators import QualitySignal, quality_signal
from ciess_core.search.files import BudgetFolder
from ciess_core.search.fit import DEFAULT_SPREAD_GRID
from ciess_core.search.pipeline import PipelineSpec, build_evaluator
from ciess_core.search.pool import shrink_sides
from ciess_core.sizes import SizeAssignment


def spread_table(
    spec: PipelineSpec,
    views: tuple[DatasetSplit, DatasetSplit],
    split: DatasetSplit,
    folder: Path,
    control: Path | None,
) -> list[str]:
    """The markdown table for every budget of ``spec`` whose chosen sizes ``folder`` holds.

    ``views``: (the search's, the fits') views of ``split`` (the same split twice without a
    held-out share). ``control``: a folder with the ES control's budget folders.
    """
    search_view, fit_view = views
    evaluator = build_evaluator(spec, search_view, cache_dir=folder / "supernet")  # the run's
    evaluator.prepare()
    model = evaluator.model
    held_out = fit_view.valid if spec.selection_share else None
    test_train, test = split.phase(Phase.TEST)
    metric = "ndcg@20"

    def scores(sizes: SizeAssignment) -> list[float]:
        signal: QualitySignal = evaluator.evaluate(sizes)  # sets the model's sizes
        assert model is not None
        found = [signal.metrics[metric]]
        if held_out is not None:
            found.append(quality_signal(model, search_view.train, held_out, 0.0).metrics[metric])
        found.append(quality_signal(model, test_train, test, 0.0).metrics[metric])
        return found

    columns = ["search's validation"] + (["held-out validation"] if held_out is not None else [])
    lines = [
        "| c | sizes | users' spread × | items' spread × | " + " | ".join(columns) + " | test |",
        "|---|---|---|---|" + "---|" * (len(columns) + 1),
    ]
    for budget in spec.search.budgets:
        budget_folder = BudgetFolder.of(folder, budget)
        if not budget_folder.finished():
            continue
        chosen = budget_folder.chosen()
        for users in DEFAULT_SPREAD_GRID[::-1]:
            for items in DEFAULT_SPREAD_GRID[::-1]:
                sizes = shrink_sides(chosen, users, items)
                cells = " | ".join(f"{value:.4f}" for value in scores(sizes))
                lines.append(f"| {budget:.2f} | chosen | {users:g} | {items:g} | {cells} |")
        control_folder = None if control is None else BudgetFolder.of(control, budget)
        if control_folder is not None and control_folder.finished():
            cells = " | ".join(f"{value:.4f}" for value in scores(control_folder.chosen()))
            lines.append(f"| {budget:.2f} | ES control | – | – | {cells} |")
    return lines
