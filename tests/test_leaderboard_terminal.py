"""``matgenbench leaderboard show`` is readable at 80 and at 200 columns: headline metrics, short protocol
ids, distinct row labels, a protocol filter."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from bench.leaderboard import show
from bench.leaderboard.terminal import SHOW_METRICS, row_labels
from bench.records import ResultRecord, write_record

PROTOCOL = {
    "train": "val", "eval": "test", "official": False,
    "label": "perov_5_offline: train=val,eval=test (offline, not the official protocol), 1,000 samples",
    "id": "perov_5_offline__train-val_eval-test_n1000",
}
METRICS = ("valid", "struct_valid", "comp_valid", "unique", "novel", "vun_rate", "cov_recall",
           "cov_precision", "wdist_density", "wdist_num_elems", "jsd_spacegroup", "jsd_elements", "comp_div",
           "struct_div")
ROWS = (  # (model, variant, kind): the committed board's shape, two DDPM rows differing only by sampler
    ("ddpm", "ddpm-eps-cosine", "run"),
    ("ddpm", "ddpm-eps-cosine+ddim-50", "run"),
    ("realnvp", "realnvp-affine-coupling", "run"),
    ("vae", "vae-gaussian", "run"),
    ("wgan_gp", "wgan-gp", "run"),
    ("Copy", "training structures, scored as if generated (memorisation)", "reference"),
    ("Test", "the reference split itself, scored as if generated", "reference"),
)


def _results(root: Path, protocol: dict = PROTOCOL, seeds: int = 3) -> Path:
    for k, (model, variant, kind) in enumerate(ROWS):
        for seed in range(seeds if kind == "run" else 1):
            metrics = {
                m: {"value": 0.1 + 0.01 * k + 0.003 * seed + 0.001 * j,
                    "direction": "min" if m.startswith(("wdist", "jsd")) else "max", "version": "1.0"}
                for j, m in enumerate(METRICS)
            }
            write_record(ResultRecord(
                model=model, family="reference" if kind == "reference" else model, variant=variant,
                dataset="perov_5", split_protocol=protocol["label"], split=dict(protocol), seed=seed,
                metrics=metrics, kind=kind, config_hash=f"{k}{seed}{protocol['id'][:4]}".ljust(8, "0"),
                cost={"train_seconds": 65.0, "parameters": 155_600, "samples_per_second": 129.0},
            ), root)
    write_record(ResultRecord(
        model="diffcsp", family="diffusion", variant="diffcsp", dataset="perov_5",
        split_protocol=protocol["label"], split=dict(protocol), seed=0, status="failed",
        reason="train: NonFiniteLossError: non-finite loss at step 7 " * 4, config_hash="failed00",
    ), root)
    return root


@pytest.mark.parametrize("width", [80, 200])
def test_show_fits_the_width_with_distinct_labels(tmp_path: Path, width: int) -> None:
    results = _results(tmp_path / "results")
    console = Console(record=True, width=width)
    tables = show(results, dataset="perov_5", console=console)
    out = console.export_text()
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width
    own = tables[0]
    labels = ["".join(str(c).split()) for c in own.columns[0]._cells]
    assert len(labels) == len(set(labels)) == len(ROWS) + 1  # every row label distinct
    assert "ddpm-eps-cosine+ddim-50" in labels  # the sampler suffix is there, whole (folded at 80 columns)
    assert ("diffcsp[failed1]" if width == 80 else "diffcsp") in labels
    assert "perov_5_offline n1000 (not official)" in out  # short protocol id in the title
    headers = ["".join(str(c.header).split()) for c in own.columns]
    shown = [m for m in METRICS if any(h.startswith(m) for h in headers)]
    assert shown == [m for m in SHOW_METRICS if m in METRICS]  # headline metrics by default
    assert "NonFiniteLossError" in out and "Headline metrics only" in out
    assert len(lines) < 60


def test_at_80_columns_a_board_of_several_protocols_keeps_every_row_label(tmp_path: Path) -> None:
    """A protocol column would leave no room for the labels at 80 columns: the board splits into one table per
    protocol (named in its title) instead, and every row keeps its label."""
    results = _results(tmp_path / "results")
    longer = {**PROTOCOL, "label": PROTOCOL["label"].replace("perov_5_offline", "perov_5_offline_12k"),
              "id": PROTOCOL["id"].replace("perov_5_offline", "perov_5_offline_12k")}
    _results(results, protocol=longer)
    console = Console(record=True, width=80)
    tables = show(results, dataset="perov_5", console=console)
    out = console.export_text()
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "perov_5_offline_12k n1000 (not official)" in out and "one table per protocol" in out
    own = [t for t in tables if "reported" not in str(t.title)]
    assert len(own) == 2
    for table in own:
        assert [str(c.header) for c in table.columns][:2] == ["model", "seeds"]  # no protocol column
        labels = ["".join(str(c).split()) for c in table.columns[0]._cells]
        assert "ddpm-eps-cosine+ddim-50" in labels and "wgan-gp" in labels


def test_row_labels_name_model_variant_and_sampler() -> None:
    from bench.leaderboard.aggregate import Row

    def row(model: str, variant: str, kind: str = "run", status: str = "complete", pid: str = "p") -> Row:
        return Row("d", pid, pid, False, model, "f", variant, kind, status=status)

    rows = [row("ddpm", "ddpm-eps-cosine"), row("ddpm", "ddpm-eps-cosine+ddim-50"), row("wgan_gp", "wgan-gp"),
            row("gan", "my-net"), row("Test", "the test split", "reference"), row("ddpm", "ddpm-eps-cosine",
            status="failed"), row("ddpm", "ddpm-eps-cosine", pid="other__x_n500"),
            row("wgan_gp_mpnn", "wgan-gp-periodic-mpnn"), row("wgan_gp_mpnn", "gan-mpnn")]
    assert row_labels(rows) == [
        "ddpm-eps-cosine [p]", "ddpm-eps-cosine+ddim-50", "wgan-gp", "gan/my-net", "Test (ref)",
        "ddpm-eps-cosine [p] [failed]", "ddpm-eps-cosine [other n500]", "wgan-gp-periodic-mpnn",
        "wgan_gp_mpnn/gan-mpnn",
    ]
    with_column = row_labels(rows, protocol_column=True)
    assert with_column[:6:5] == ["ddpm-eps-cosine", "ddpm-eps-cosine [failed]"]


def test_protocol_filter_and_metric_choice(tmp_path: Path) -> None:
    results = _results(tmp_path / "results")
    other = dict(PROTOCOL, id="perov_5_offline_12k__train-val_eval-test_n1000", label="perov_5_offline_12k")
    _results(results, other, seeds=1)
    console = Console(record=True, width=200)
    (table, *_) = show(results, dataset="perov_5", console=console)
    assert "protocol" in [c.header for c in table.columns]  # two protocols: a column of short ids
    labels = [str(c) for c in table.columns[0]._cells]
    assert len(labels) == len(set(labels)) and "diffcsp [failed]" not in labels
    for name in ("perov_5_offline_12k", "perov_5_offline_12k n1000", other["id"]):
        console = Console(record=True, width=200)
        tables = show(results, protocol=name, console=console)
        assert len(tables) == 1  # published rows are left out with a protocol filter
        assert "perov_5_offline_12k n1000" in console.export_text()
        assert "protocol" not in [c.header for c in tables[0].columns]
    with pytest.raises(ValueError, match=r"protocols on the board: \['perov_5_offline n1000'"):
        show(results, protocol="nope", console=console)
    console = Console(record=True, width=250)
    (table, *_) = show(results, protocol="perov_5_offline", metrics=["all"], console=console)
    assert sum("↑" in str(c.header) or "↓" in str(c.header) for c in table.columns) == len(METRICS)
    (table, *_) = show(results, protocol="perov_5_offline", metrics=["novel"], sort="struct_div",
                       console=console)
    metric_headers = [str(c.header).split()[0] for c in table.columns if "↑" in str(c.header)]
    assert metric_headers == ["novel", "struct_div"]  # the sort key is shown too
