"""Training in stages (``model.stages``): a VQ-VAE's prior, a latent diffusion's second stage or a distilled
student train after their first stage, each on its share of the protocol's step budget, with its own cost in
the record.

The model here is a test double: the seed VAE with a second stage that fits a learned Gaussian prior to the
encoder's posterior means (a small real second stage, not a product model).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from bench.models.backbone import CrystalTransformer
from bench.models.vae.vae import CrystalVAE
from omegaconf import OmegaConf
from torch import Tensor, nn

from bench.config import compose, config_hash
from bench.train import stage_plan

TINY = [
    "dataset=tiny", "logger=none", "trainer.enable_progress_bar=false", "train.batch_size=8",
    "sample.num_samples=6", "sample.batch_size=3", "record.regenerate_board=false",
    "metrics.names=[struct_valid,unique]", "model=vae", "model.module.backbone.d_model=16",
    "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2", "model.module.latent_dim=4",
    "model.module._target_=tests.test_stages.TwoStageVAE",
    "+model.stages=[{name: autoencoder, share: 0.6}, {name: prior, share: 0.4}]",
    "train.ckpt_every_n_steps=2",
]


class TwoStageVAE(CrystalVAE):
    """The seed VAE, then a learned Gaussian prior ``N(m, diag(s^2))`` fitted by maximum likelihood to the
    frozen encoder's posterior means (sampling draws from it)."""

    training_stages = ("autoencoder", "prior")

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.prior_mean = nn.Parameter(torch.zeros(self.latent_dim))
        self.prior_log_std = nn.Parameter(torch.zeros(self.latent_dim))

    def stage_parameters(self, name: str) -> list[nn.Parameter]:
        if name == "autoencoder":
            return [*self.encoder.parameters(), *self.decoder.parameters()]
        return [self.prior_mean, self.prior_log_std]

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.stage != "prior":
            return super().loss(batch)
        with torch.no_grad():
            mu, _ = self.encode(batch)
        z = (mu - self.prior_mean) / self.prior_log_std.exp()
        nll = (0.5 * z.pow(2) + self.prior_log_std).sum(-1).mean()
        nll = nll + 0.5 * self.latent_dim * math.log(2 * math.pi)
        return {"loss": nll, "prior_nll": nll}

    def sample_prior(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.prior_mean + self.prior_log_std.exp() * self._randn((n, self.latent_dim), generator)


def _cfg(tmp_path: Path, *overrides: str):
    return compose([
        *TINY, f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.leaderboard_dir={tmp_path / 'board'}", *overrides,
    ])


def _weights(path: str | Path) -> dict[str, Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_stage_plan_splits_the_budget_exactly_and_refuses_bad_plans() -> None:
    two = [{"name": "a", "share": 0.7}, {"name": "b", "share": 0.3}]
    model = OmegaConf.create({"name": "m", "stages": two})
    plan = stage_plan(model, 1001)
    assert [p["max_steps"] for p in plan] == [701, 300] and sum(p["max_steps"] for p in plan) == 1001
    assert stage_plan(OmegaConf.create({"name": "m"}), 1000) == []
    bad = {
        "sum to 1": [{"name": "a", "share": 0.7}, {"name": "b", "share": 0.4}],
        "own name": [{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}],
        "positive": [{"name": "a", "share": 1.5}, {"name": "b", "share": -0.5}],
    }
    for words, stages in bad.items():
        with pytest.raises(ValueError, match=words) as caught:
            stage_plan(OmegaConf.create({"name": "m", "stages": stages}), 100)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="trainer.max_steps to a positive number"):
        stage_plan(model, -1)


def test_set_stage_freezes_everything_but_the_stage() -> None:
    module = TwoStageVAE(
        backbone=functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), num_types=3, max_atoms=2, latent_dim=4,
    )
    module.set_stage("prior")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"prior_mean", "prior_log_std"}
    optimiser = module.configure_optimizers()
    assert sum(len(g["params"]) for g in optimiser.param_groups) == 2  # the stage's optimiser sees only them
    with pytest.raises(ValueError, match="no training stage 'distil'.*autoencoder, prior"):
        module.set_stage("distil")
    with pytest.raises(NotImplementedError):
        CrystalVAE.stage_parameters(module, "prior")


def test_training_in_stages_runs_each_on_its_share_and_records_its_cost(tmp_path: Path) -> None:
    from bench.evaluate import evaluate
    from bench.sample import sample
    from bench.train import train

    cfg = _cfg(tmp_path, "trainer.max_steps=10")
    summary = train(cfg)
    stages = summary["stages"]
    assert [(s["name"], s["max_steps"], s["steps"]) for s in stages] == [
        ("autoencoder", 6, 6), ("prior", 4, 4)]
    assert summary["steps"] == 10 and not summary["stopped_by_time"]
    assert all(s["seconds"] > 0 and math.isfinite(s["loss_first"]) for s in stages)
    assert summary["train_seconds"] == pytest.approx(sum(s["seconds"] for s in stages))

    run_dir = Path(cfg.paths.run_dir)
    first, final = _weights(stages[0]["checkpoint"]), _weights(run_dir / "checkpoints" / "last.ckpt")
    # stage 2 moved the prior only: the autoencoder of the final model is the one stage 1 left
    for name, value in first.items():
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(value, final[name]), name
    assert not torch.equal(first["prior_mean"], final["prior_mean"])
    # stage 1 left the prior at its initial value
    assert torch.equal(first["prior_mean"], torch.zeros(4))
    assert torch.equal(first["prior_log_std"], torch.zeros(4))

    sample(cfg)
    record, _ = evaluate(cfg)
    assert [s["name"] for s in record.cost["train_stages"]] == ["autoencoder", "prior"]
    assert record.cost["train_steps"] == 10 and record.config_hash == config_hash(cfg)


def test_a_killed_staged_training_resumes_at_the_unfinished_stage(tmp_path: Path) -> None:
    from bench.train import train

    cfg = _cfg(tmp_path, "trainer.max_steps=10")
    whole = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    # as if killed during the prior stage: stage 1 is recorded as done, stage 2 and the summary are not
    progress = json.loads((run_dir / "stages.json").read_text())
    (run_dir / "stages.json").write_text(json.dumps(progress[:1]))
    (run_dir / "train_summary.json").unlink()
    shutil.rmtree(run_dir / "checkpoints" / "stage-1-prior")
    (run_dir / "checkpoints" / "stage-1-prior.ckpt").unlink()

    resumed = train(_cfg(tmp_path, "trainer.max_steps=10", "train.ckpt_path=last"))
    assert [s["steps"] for s in resumed["stages"]] == [6, 4]
    assert resumed["stages"][0]["seconds"] == whole["stages"][0]["seconds"]  # kept, not re-measured
    final = _weights(run_dir / "checkpoints" / "last.ckpt")
    first = _weights(whole["stages"][0]["checkpoint"])
    assert all(torch.equal(first[n], final[n]) for n in first if n.startswith("encoder."))

    (run_dir / "train_summary.json").unlink()  # killed after the last stage, before the summary
    again = train(_cfg(tmp_path, "trainer.max_steps=10", "train.ckpt_path=last"))
    assert [s["steps"] for s in again["stages"]] == [6, 4] and again["steps"] == 10


def test_the_wall_clock_cap_holds_for_all_stages_together(tmp_path: Path) -> None:
    from bench.train import train

    hour = ["trainer.max_steps=10", "trainer.max_time=00:01:00:00"]
    cfg = _cfg(tmp_path, *hour)
    whole = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    progress = json.loads((run_dir / "stages.json").read_text())
    progress[0]["seconds"] = 3600.0  # stage 1 "took" the whole hour of the cap
    (run_dir / "stages.json").write_text(json.dumps(progress[:1]))
    (run_dir / "train_summary.json").unlink()
    capped = train(_cfg(tmp_path, *hour, "train.ckpt_path=last"))
    assert capped["stages"][1]["steps"] == 0 and capped["stages"][1]["stopped_by_time"]
    assert capped["stopped_by_time"] and capped["steps"] == 6 and whole["steps"] == 10
