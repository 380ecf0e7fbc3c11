"""The Markdown board (``leaderboard/README.md``): one table per dataset, seeds pooled per model variant, and
per protocol the quality-versus-NFE numbers of the rows that sample one trained model at several NFE."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.io_utils import atomic_write_text
from bench.leaderboard.aggregate import (
    INTERVAL_COSTS,
    MetricSummary,
    Row,
    best_per_column,
    metric_columns,
    other_space,
)
from bench.leaderboard.board import Board, board_from_records, collect
from bench.leaderboard.format import (
    DASH,
    NA,
    arrow,
    fmt_ci,
    fmt_mean_std,
    fmt_params,
    fmt_rate,
    fmt_seconds,
    fmt_value,
    truncate,
)
from bench.leaderboard.funnel import STAGES as FUNNEL_STAGES
from bench.leaderboard.funnel import fmt_stage, funnel_rows
from bench.leaderboard.headline import dataset_title, protocol_order, row_label, row_labels, short_protocol
from bench.leaderboard.nfe import (
    NFE_PANELS,
    NfeCurve,
    missing_sentence,
    nfe,
    nfe_curves,
    panel_summary,
    shows_nfe,
)
from bench.leaderboard.published import published_meta
from bench.leaderboard.summary import summary_markdown
from bench.records import ResultRecord

__all__ = ["render_markdown", "render_board_markdown", "write_board"]

_REASON_CHARS = 160


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _legend(composition: bool = False) -> list[str]:
    """The reading guide; ``composition``: the board has composition-track rows, which get a bullet of their
    own (a crystal-only board reads as before)."""
    meta = published_meta()
    lines = [
        "How to read it:",
        "",
        "- Each cell is the mean ± sample standard deviation over seeds, with the 95% confidence interval of "
        "the mean below it: Student-t below 10 seeds (a percentile bootstrap over 3 seeds would be just "
        "[min, max]), percentile bootstrap (2,000 resamples) from 10 seeds on. With one seed there is no "
        "spread: `CI n/a (1 seed)`.",
        "- ↑ higher is better, ↓ lower is better. **Bold**: the leader of its column among this project's "
        "complete runs on the same split protocol, only when its lead over the runner-up holds (Welch's "
        "t-test p < 0.05 and more than two units of the last shown digit apart); ties at display precision "
        "are never bold, nor are reference rows and published numbers.",
        "- `vun_rate`: fraction of all samples that are valid AND unique AND novel, decided per structure "
        "(unique: the first of each set of matching structures; MatterGen's convention).",
        "- *reference* rows are baselines scored by the same metric suite (e.g. the test set itself); "
        "*external* rows are someone else's samples scored here.",
        "- *protocol*: the split protocol a run used; only `official` protocols compare with published "
        "numbers.",
        "- Cost columns are means over seeds: parameters, training seconds, generated structures per second.",
        "- Failed or not-applicable runs are listed with their reason instead of disappearing.",
        "- `n/a`: the metric does not apply to the dataset, with the reason below it (composition metrics "
        "on single-element data such as Carbon-24, where every model would score 0); never ranked or tied.",
        "- `nll_test`: negative log-likelihood of the test split in nats per crystal, for models with a "
        "tractable likelihood or bound (exact, or an upper bound such as a dequantised flow's or a VAE's "
        "importance-weighted bound, as the record's `nll_kind` says); a dash for the others. Values of "
        "different variables (e.g. crystal_gpt's token sequences against the codec's fields) are never "
        "compared: a cell in another space than most of its protocol's rows names its space and is not "
        "ranked.",
        "- *Usability funnel*: of the requested items, how many were decoded, valid, unique, novel and "
        "plausible (the property the suite's predictor gives them within the training split's central 99%), "
        "each stage a subset of the one before; mean count over seeds with the share of requested items. "
        "`n/a`: the records were scored before the funnel, or the stage does not apply "
        "(`docs/funnel.md`).",
        "- *Quality versus NFE*: rows of one trained model sampled with several step counts (the variant's "
        "sampler tag, e.g. `+ddim-50`), one group per sampler family (the tag without its step count), by "
        "network function evaluations per sample; mean over seeds with the 95% interval of the mean. "
        "`index.html` draws them as lines.",
        f"- *Reported, not re-run*: numbers copied from {meta['short_citation']} ({meta['url']}); "
        f"protocol: {meta['protocol']}.",
    ]
    if composition:
        lines.append(
            "- *Composition track* (datasets marked so, `docs/composition_track.md`): the models generate "
            "formulas, scored by the composition metrics (`comp_*`: SMACT validity, uniqueness, novelty and "
            "their `comp_vun_rate`; element-histogram JSD, Magpie Fréchet distance, predicted-target W1, "
            "each on a draw of the samples against the test split); `nll_test` there is in nats per "
            "composition. "
            "Its reference rows are draws of the test and validation formulas (Test, Val: what a perfect "
            "sampler reaches at that sample size) and random compositions (Random, the floor)."
        )
    return lines


def _header(columns: Sequence[str], rows: Sequence[Row]) -> list[str]:
    directions = {}
    for name in columns:
        directions[name] = next((r.metrics[name].direction for r in rows if name in r.metrics), "max")
    return [f"{name} {arrow(directions[name])}" for name in columns]


def _metric_cell(row: Row, name: str, bold: bool, other: str | None = None) -> str:
    summary = row.metrics.get(name)
    if summary is not None and summary.not_applicable:
        return f"{NA}<br><sub>{_cell(summary.not_applicable)}</sub>"
    if summary is None or summary.mean is None:
        return DASH
    main = fmt_mean_std(summary)
    if bold:
        main = f"**{main}**"
    note = f"; {_cell(other)}: another space, not ranked" if other else ""
    return f"{main}<br><sub>{fmt_ci(summary)}{note}</sub>"


def _name_cell(row: Row) -> str:
    name = _cell(row.name)
    if row.kind == "reference":
        return f"*{name}* (reference)"
    if row.kind == "external":
        return f"{name} (external)"
    return name


def _status_cell(row: Row) -> str:
    if row.status == "complete":
        return "complete"
    return f"**{row.status.replace('_', ' ')}**: {_cell(truncate(row.reason or '', _REASON_CHARS))}"


def _own_table(rows: Sequence[Row]) -> list[str]:
    columns = metric_columns(rows)
    best = best_per_column(rows, columns)
    others = other_space(rows, columns)
    header = [
        "model",
        "family",
        "protocol",
        "seeds",
        *_header(columns, rows),
        "params",
        "train s",
        "samples/s",
        "status",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        # a pinned protocol of this project's own (the composition split) says "pinned" and is not someone's
        # official one
        said = "official" in row.protocol or "pinned" in row.protocol
        protocol = row.protocol + (" (official)" if row.official and not said else "")
        cells = [
            _name_cell(row),
            _cell(row.family),
            _cell(protocol),
            str(len(row.seeds)) if row.status == "complete" else DASH,
            *[_metric_cell(row, m, i in best.get(m, set()), others.get((i, m))) for m in columns],
            fmt_params(row.cost.get("parameters")),
            fmt_seconds(row.cost.get("train_seconds")),
            fmt_rate(row.cost.get("samples_per_second")),
            _status_cell(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _with_interval(summary: MetricSummary | None, *, rate: bool) -> str:
    """``mean [low, high]`` (a metric at the mean's precision, a ``rate`` as throughputs are shown), ``n/a``
    or a dash."""
    if summary is not None and summary.not_applicable:
        return NA
    if summary is None or summary.mean is None:
        return DASH
    mean = fmt_rate(summary.mean) if rate else fmt_value(summary.mean)
    ci = fmt_ci(summary, rate=rate)
    return f"{mean} ({ci})" if summary.ci is None else f"{mean} {ci}"


def _nfe_table(curves: Sequence[NfeCurve]) -> list[str]:
    header = ["model · sampler", "row", "NFE", "seeds"]
    for key, title in NFE_PANELS:
        direction = next((s.direction for c in curves for r in c.rows if (s := panel_summary(r, key))), "max")
        header.append(f"{title} {arrow(direction)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for curve in curves:
        for row in curve.rows:
            summaries = [row.metrics.get(key) or row.cost_summaries.get(key) for key, _ in NFE_PANELS]
            cells = [
                _cell(curve.label),
                _cell(row_label(row)),
                f"{nfe(row):,.0f}",
                str(len(row.seeds)),
                *[_with_interval(s, rate=key in INTERVAL_COSTS)
                  for (key, _), s in zip(NFE_PANELS, summaries, strict=True)],
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _nfe_lines(dataset: str, rows: Sequence[Row]) -> list[str]:
    """Per protocol, the quality-versus-NFE table (one trained model sampled at two or more NFE), else one
    sentence saying which rows would make it; nothing for a dataset without complete runs."""
    by_protocol: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_protocol[row.protocol_id].append(row)
    blocks: list[str] = []
    for pid in protocol_order(rows):
        protocol_rows = by_protocol[pid]
        curves = nfe_curves(protocol_rows)
        name = _cell(short_protocol(protocol_rows[0]))
        if shows_nfe(curves):
            blocks += [f"**{name}**", "", *_nfe_table(curves), ""]
        elif (sentence := missing_sentence(protocol_rows)) is not None:
            blocks += [f"**{name}**: {sentence}", ""]
    if not blocks:
        return []
    intro = ("Rows of one trained model sampled at different NFE (network function evaluations per "
             "sample), grouped by sampler family (one line each in `index.html`): mean over seeds with the "
             "95% interval of the mean, as above; samples/s as measured on the device each run sampled on.")
    return [f"### {dataset}: quality versus NFE", "", intro, "", *blocks]


def _funnel_table(rows: Sequence[Row]) -> list[str]:
    header = ["model", "seeds", *FUNNEL_STAGES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, label in zip(rows, row_labels(rows), strict=True):
        f = row.funnel
        seeds = len(row.seeds)
        if f is None:
            cells = [_cell(label), str(seeds), *[NA] * len(FUNNEL_STAGES)]
        else:
            shown = str(f.n_seeds) if f.complete else f"{f.n_seeds} of {seeds}"
            cells = [_cell(label), shown, *[fmt_stage(s) for s in f.stages]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _funnel_lines(dataset: str, rows: Sequence[Row]) -> list[str]:
    """Per protocol, the usability funnel of the complete rows (mean stage counts over seeds); one sentence
    when no record of the dataset carries a funnel."""
    shown = funnel_rows(rows)
    if not shown:
        return []
    vun = "comp_vun_rate" if shown[0].track == "composition" else "vun_rate"
    intro = ("How many of the requested items survive each screen, each stage a subset of the one before: "
             "decoded, valid, unique (the first of its duplicates), novel (not in the training split; the "
             f"numerator of `{vun}`), plausible (the property the suite's own predictor gives it within the "
             "training split's central 99%). Mean count over seeds (share of the requested items); `n/a`: no "
             "funnel in the records (scored before it) or a stage that does not apply.")
    lines = [f"### {dataset}: usability funnel", "", intro, ""]
    if not any(r.funnel is not None for r in shown):
        return lines + [f"_No record of {dataset} carries the funnel yet (scored before it): n/a for every "
                        "row; `matgenbench rescore --funnel-from-tables` adds it from the per-sample "
                        "tables._",
                        ""]
    by_protocol: dict[str, list[Row]] = defaultdict(list)
    for row in shown:
        by_protocol[row.protocol_id].append(row)
    for pid in protocol_order(shown):
        group = by_protocol[pid]
        lines += [f"**{_cell(short_protocol(group[0]))}**", "", *_funnel_table(group), ""]
        rules = list(dict.fromkeys(r.funnel.rule for r in group if r.funnel is not None and r.funnel.rule))
        reasons = list(dict.fromkeys(r.funnel.stage("plausible").reason for r in group
                                     if r.funnel is not None and r.funnel.stage("plausible").reason))
        lines += [f"- *plausible*: {_cell(rule)}." for rule in rules]
        lines += [f"- *plausible* n/a: {_cell(reason)}." for reason in reasons]
        if rules or reasons:
            lines.append("")
    return lines


def _published_table(rows: Sequence[Row]) -> list[str]:
    columns = metric_columns(rows)
    header = ["model", "family", *_header(columns, rows), "source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            _cell(row.name),
            _cell(row.family),
            *[fmt_value(row.mean(m)) if m in row.metrics else DASH for m in columns],
            _cell(row.source or ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_board_markdown(board: Board, analysis: str | None = None) -> str:
    """Render a :class:`Board` as Markdown.

    Args:
        board: The aggregated board.
        analysis: Hand-written Markdown (``leaderboard/analysis.md``), under "Analysis" before the tables.
    """
    lines = [
        "# matgenbench leaderboard",
        "",
        "Built by `matgenbench leaderboard build` from the result records in `leaderboard/results/` "
        f"({board.n_records} record{'s' if board.n_records != 1 else ''}); every record is validated against "
        "`record.schema.json` first. `index.html` beside this file (same command) has the same tables, "
        "sortable, with a family filter and plots; open it in a browser, it needs no network.",
        "",
        *_legend(any(r.track == "composition" for r in board.rows)),
        "",
    ]
    if not board.n_records:
        lines += ["_No result records yet: run `matgenbench run`._", ""]
    if analysis and analysis.strip():
        lines += ["## Analysis", "", analysis.strip(), ""]
    for dataset in board.datasets():
        own, published = board.own_rows(dataset), board.published_rows(dataset)
        lines += [f"## {dataset_title(dataset, own)}", ""]
        if own:
            lines += [*_own_table(own), ""]
            findings = summary_markdown(own, dataset)
            if findings:
                lines += [f"### {dataset}: findings", "", *findings]
            lines += _funnel_lines(dataset, own)
            lines += _nfe_lines(dataset, own)
        else:
            lines += ["_No runs of this project on this dataset yet._", ""]
        if published:
            meta = published_meta()
            lines += [
                f"### {dataset}: reported, not re-run",
                "",
                f"Copied from {meta['short_citation']} ({meta['url']}); {meta['protocol']}. "
                "Not comparable with runs on other protocols.",
                "",
                *_published_table(published),
                "",
            ]
    if board.excluded:
        lines += [
            "## Records left out",
            "",
            f"{len(board.excluded)} file(s) under `leaderboard/results/` are not on the board:",
            "",
        ]
        for item in board.excluded:
            lines.append(f"- `{item.path}`: {_cell(truncate('; '.join(item.problems), 300))}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(records: Sequence[ResultRecord], *, published: bool = True) -> str:
    """Render records as Markdown: per dataset, one row per model variant and split protocol, seeds pooled.

    Args:
        records: Result records (assumed valid; :func:`write_board` validates the files it reads).
        published: Add the "reported, not re-run" sections.
    """
    return render_board_markdown(board_from_records(records, published=published))


def write_board(results_dir: str | Path, out_path: str | Path) -> Path:
    """Validate and aggregate the records under ``results_dir``; write the Markdown board to ``out_path``.

    Only the Markdown file is written; :func:`bench.leaderboard.build` writes the HTML page as well.
    """
    return atomic_write_text(out_path, render_board_markdown(collect(results_dir)))
