"""Compare finished runs: one table, overlaid validation curves, accuracy against time, paired tests.

Runs are only compared on the *same* test images. Each run's ``predictions.csv`` names its test
images; runs whose test sets differ are put in separate groups (column ``test_set``: A, B, …) and
never tested against each other. Within a group every pair gets an exact McNemar test on the
discordant test images (Holm-corrected over the pairs) and a paired-bootstrap 95% CI of the
accuracy difference, so "0.75 vs 0.58 on 36 images" is only called a win when it is not noise.
Correctness is each run's decision (predictions.csv's ``pred``: a binary run's saved operating threshold),
the same rule as ``test.accuracy``, ``cxr predict`` and ``cxr serve``.

Three floors: :mod:`.loading` (run folders and seed groups → summaries and rows), :mod:`.statistics`
(paired tests, seed-group tests) and :mod:`.rendering` (one template context → compare.html and compare.md,
and the plots); this module writes the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab.experiments.compare.loading import (
    RunSummary,
    averages_from_predictions,
    compare_fields,
    expand_groups,
    image_key,
    load_summaries,
    load_summary,
    run_params,
)
from cxrlab.experiments.compare.rendering import (
    context,
    footnotes,
    main_table,
    md_table,
    notes,
    pair_table,
    plot_accuracy_vs_time,
    plot_val_curves,
    render_markdown,
    write_html,
)
from cxrlab.experiments.compare.statistics import (
    ALPHA,
    AUC_PAIR_FIELDS,
    GROUP_TEST_FIELDS,
    PAIR_FIELDS,
    group_fields,
    group_tables,
    multilabel_paired_tests,
    paired_tests,
)
from cxrlab.experiments.compare.subgroups import FIELDS as SUBGROUP_FIELDS
from cxrlab.experiments.compare.subgroups import subgroup_rows, subgroup_tables
from cxrlab.runs import atomic_write, check_out_folder, check_writable, write_csv

__all__ = [
    "ALPHA", "AUC_PAIR_FIELDS", "COMPARE_FIELDS", "COMPARE_OUTPUTS", "GROUP_TEST_FIELDS", "PAIR_FIELDS",
    "RunSummary", "averages_from_predictions", "compare_runs", "compare_summaries", "expand_groups",
    "footnotes", "group_tables", "image_key", "load_summaries", "load_summary", "main_table", "md_table",
    "multilabel_paired_tests", "notes", "pair_table", "paired_tests", "run_params",
]  # fmt: skip

#: compare.csv's columns (the registry's metrics included, :func:`.loading.compare_fields`)
COMPARE_FIELDS = compare_fields()
COMPARE_OUTPUTS = (
    "compare.csv", "compare.md", "compare.html", "pairwise.csv", "pairwise_auc.csv", "groups.csv",
    "group_tests.csv", "subgroups.csv", "plots",
)  # fmt: skip


def compare_summaries(
    summaries: list[RunSummary],
    out: Path,
    extra_outputs: tuple[str, ...] = (),
    groups: dict[str, dict[int, Path]] | None = None,
) -> dict[str, Any]:
    """Write compare.csv/.md/.html, pairwise.csv and plots for loaded runs; return what was written.

    ``out`` must be new, empty or hold only these outputs (plus ``extra_outputs``, e.g. a sweep's).
    ``groups`` (seed groups, :func:`expand_groups`): their runs are summarised per group and tested
    group against group (groups.csv, group_tests.csv), not McNemar-tested run against run."""
    check_out_folder(out, COMPARE_OUTPUTS + extra_outputs)
    check_writable(out)
    rows = [s.row() for s in summaries]
    by_path = {s.path: s for s in summaries}
    members = {p for g in (groups or {}).values() for p in g.values()}
    group_summaries = {g: {seed: by_path[p] for seed, p in m.items()} for g, m in (groups or {}).items()}
    group_rows, group_tests = group_tables(group_summaries) if groups else ([], [])
    if groups:
        write_csv(out / "groups.csv", group_rows, group_fields())
        write_csv(out / "group_tests.csv", group_tests, GROUP_TEST_FIELDS)
    pairs = paired_tests([s for s in summaries if s.path not in members])
    auc_pairs = multilabel_paired_tests(summaries)
    write_csv(out / "compare.csv", rows, compare_fields())
    write_csv(out / "pairwise.csv", pairs, PAIR_FIELDS)
    if auc_pairs:
        write_csv(out / "pairwise_auc.csv", auc_pairs, AUC_PAIR_FIELDS)
    plots = {}
    curves = plot_val_curves(summaries, out / "plots" / "val_curves.png")
    if curves:
        plots["val_curves"] = curves
    plots["accuracy_vs_time"] = plot_accuracy_vs_time(rows, out / "plots" / "accuracy_vs_time.png")

    ctx = context(summaries, rows, pairs, auc_pairs, group_rows, group_tests, plots)
    sub_rows = subgroup_rows(summaries)  # per subgroup (cxrlab.evaluation.subgroups), runs side by side
    if sub_rows:
        write_csv(out / "subgroups.csv", sub_rows, SUBGROUP_FIELDS)
    ctx["subgroup_tables"] = subgroup_tables(summaries)
    md = render_markdown(ctx)
    atomic_write(out / "compare.md", md)
    write_html(out / "compare.html", ctx)
    return {
        "rows": rows,
        "pairs": pairs,
        "auc_pairs": auc_pairs,
        "notes": ctx["notes"],
        "footnotes": ctx["footnotes"],
        "plots": plots,
        "files": [out / "compare.csv", out / "compare.md", out / "compare.html", out / "pairwise.csv"],
        "markdown": md,
        "groups": group_rows,
        "group_tests": group_tests,
    }


def compare_runs(
    runs: list[str | Path], out: str | Path, extra_outputs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Compare finished run folders; writes ``out/compare.{csv,md,html}``, ``pairwise.csv``, plots."""
    check_out_folder(Path(out), COMPARE_OUTPUTS + extra_outputs)  # before reading any run
    paths, groups = expand_groups(runs)
    return compare_summaries(load_summaries(list(paths)), Path(out), extra_outputs, groups)
