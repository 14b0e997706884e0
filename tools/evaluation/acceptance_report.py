"""The report's acceptance section: the final check on held-out inputs the search never judged on.

The search picks the version whose figure looked best on its part of the held-out data, so that figure is
biased toward the pick; the baseline and the final version are measured again on the acceptance part, and that
figure is the one that counts (the criteria are checked on it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tools.evaluation.types import AccuracyResult


class AcceptanceCheck(BaseModel):
    """The final check on inputs the search never judged on: the search chose the version on its own part of
    the held-out data, so the figure it saw is biased toward that version; `Report.baseline.accuracy` and
    `Report.final.accuracy` are measured here instead, and the search's figures are kept beside them."""

    model_config = ConfigDict(frozen=True)

    independent: bool = Field(
        description="True when the acceptance part holds inputs the search never judged on; False when the "
        "held-out data had a single batch and the acceptance part is the search part."
    )
    batches: int = Field(ge=1, description="Batches of the acceptance part.")
    samples: int = Field(ge=0, description="Inputs of the acceptance part.")
    search_batches: int = Field(ge=1, description="Batches of the search part.")
    baseline_search: AccuracyResult | None = Field(
        default=None, description="The original's accuracy on the search part (the search's baseline)."
    )
    final_search: AccuracyResult | None = Field(
        default=None, description="The final version's accuracy on the search part, as the search saw it."
    )


def _cell(result: AccuracyResult | None) -> str:
    """A figure's value for a table cell; '-' when missing."""
    return "-" if result is None else f"{result.value:.4g}"


def acceptance_section(
    check: AcceptanceCheck | None, baseline: AccuracyResult | None, final: AccuracyResult | None
) -> list[str]:
    """Markdown lines comparing the search part's figures with the acceptance part's (`baseline`, `final`)."""
    if check is None:
        return []
    where = (
        f"{check.samples} held-out inputs ({check.batches} batches) that the search never judged on"
        if check.independent
        else f"the search part itself ({check.samples} inputs): no independent acceptance split was possible"
    )
    lines = [
        "## Acceptance",
        "",
        f"The baseline's and the final version's accuracy above are measured on {where}; the criteria are "
        "checked on these figures.",
        "",
        f"| version | figure | search part ({check.search_batches} batches) | acceptance part (counts) |",
        "|---|---|---|---|",
    ]
    for name, search, accepted in (
        ("baseline", check.baseline_search, baseline),
        ("final", check.final_search, final),
    ):
        shown = accepted or search
        label = shown.label if shown is not None else "accuracy"
        lines.append(f"| {name} | {label} | {_cell(search)} | {_cell(accepted)} |")
    return lines + [""]
