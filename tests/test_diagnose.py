"""``matgenbench diagnose``: the flow-time split of a flow-matching model's coordinate loss, on fields whose
answer is known (a zero field scores exactly 1, the exact field of a point mass scores 0)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.flow_matching.model import CrystalFlowMatching
from bench.models.flow_matching.paths import EuclideanPath, TorusPath, wrap

from bench.config import compose
from bench.diagnose import main, velocity_loss_by_time

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> CrystalFlowMatching:
    torch.manual_seed(0)
    return CrystalFlowMatching(
        backbone=partial(PeriodicMPNN, width=16, n_layers=1, num_frequencies=2),
        optimizer=partial(torch.optim.AdamW, lr=1e-3), num_types=3, max_atoms=4,
        paths={"atom_types": EuclideanPath(), "frac_coords": TorusPath(), "lattice": EuclideanPath()},
        time_dim=8,
    )


def _point_mass_batch(n: int = 6) -> dict[str, torch.Tensor]:
    """``n`` copies of one three-atom crystal (a point-mass data set)."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(n, -1).clone()
    types = torch.nn.functional.one_hot(torch.tensor([1, 2, 2, 0]), 3).float().expand(n, -1, -1).clone()
    frac = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.25, 0.75, 0.1], [0.0, 0.0, 0.0]])
    return {"atom_types": types * mask[..., None], "frac_coords": frac.expand(n, -1, -1).clone(),
            "lattice": torch.zeros(n, 6), "mask": mask}


def test_a_zero_field_scores_exactly_one_in_every_bin() -> None:
    model = _model()
    zero = lambda x, t, m: {k: torch.zeros_like(v) for k, v in x.items()}  # noqa: E731, ARG005
    rows = velocity_loss_by_time(model, _point_mass_batch(), bins=4, draws=2, velocity=zero)
    assert [(r["t_low"], r["t_high"]) for r in rows] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert all(r["ratio"] == 1.0 and r["zero"] > 0 for r in rows)


def test_the_exact_field_of_a_point_mass_scores_zero() -> None:
    """For one crystal ``x1`` the marginal velocity on the torus is ``wrap(x1 - x_t) / (1 - t)``, which equals
    the conditional target ``wrap(x1 - x0)`` at every point of its path."""
    model = _model()
    batch = _point_mass_batch()
    x1, _ = model.data_fields(batch)

    def exact(x: dict[str, torch.Tensor], t: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        left = (1.0 - t).view(-1, 1, 1)
        return {"frac_coords": wrap(x1["frac_coords"] - x["frac_coords"]) / left * mask[..., None]}

    rows = velocity_loss_by_time(model, batch, bins=5, draws=3, velocity=exact)
    assert all(r["ratio"] < 1e-8 for r in rows), rows
    untrained = velocity_loss_by_time(model, batch, bins=5, draws=3)  # the module's own (untrained) field
    assert all(r["ratio"] > 0.5 for r in untrained)


def test_the_command_prints_the_split_of_a_trained_run_and_refuses_other_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.rundirs import default_run_dir
    from bench.train import train

    def cfg(*overrides: str):  # noqa: ANN202
        return compose(["dataset=tiny", "logger=none", "trainer.max_steps=4",
                        "trainer.enable_progress_bar=false", "train.batch_size=8",
                        f"paths.output_dir={tmp_path / 'outputs'}", *overrides])

    flow = cfg("model=flowmm", "model.module.backbone.width=16", "model.module.backbone.n_layers=1",
               "model.module.backbone.num_frequencies=2", "model.module.time_dim=16")
    train(flow)
    assert main([str(default_run_dir(flow)), "--split", "test", "--bins", "2", "--draws", "1"]) == 0
    out = capsys.readouterr().out
    assert "left out" in out  # the tiny test split has elements the run never saw: named, not a crash
    assert "tiny/test" in out and "[0.00, 0.50)" in out and "[0.50, 1.00)" in out
    vae = cfg("model=vae", "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1",
              "model.module.backbone.n_heads=2")
    train(vae)
    assert main([str(default_run_dir(vae))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a flow-matching model" in err[0]
    assert main([str(tmp_path / "nowhere")]) == 2
