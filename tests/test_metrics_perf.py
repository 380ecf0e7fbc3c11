"""The evaluation benchmark command (``matgenbench perf evaluate``): helpers and an end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from bench.metrics.perf import compare_values, main, perturbed


def test_perturbed_is_seeded_and_cycles():
    base = [Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])]
    a, b = perturbed(base, 3, seed=1), perturbed(base, 3, seed=1)
    assert len(a) == 3 and all(np.allclose(x.cart_coords, y.cart_coords) for x, y in zip(a, b, strict=True))
    assert not np.allclose(a[0].cart_coords, a[1].cart_coords)
    assert a[0].composition == base[0].composition


def test_compare_values_treats_nan_as_equal():
    assert compare_values({"a": 1.0, "b": math.nan}, {"a": 1.0, "b": math.nan}) == []
    assert compare_values({"a": 1.0}, {"a": 1.1}) == ["a"]


def test_missing_data_dir_is_reported(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MATGENBENCH_DATA_DIR", raising=False)
    assert main(["evaluate", "--n", "5", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "MATGENBENCH_DATA_DIR" in capsys.readouterr().out


@pytest.mark.slow
def test_perf_evaluate_end_to_end(data_dir, capsys):
    code = main(
        ["evaluate", "--n", "12", "--sizes", "6", "--metrics", "default", "--data-dir", str(data_dir)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "speed-up" in out and "agree" in out and "N=6" in out
    assert "CrystalNN fingerprint of 12 structures" in out and "matminer" in out
