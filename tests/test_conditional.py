"""Property-conditional generation: a conditional model's config names its property, ``sample`` draws at
requested values, ``evaluate`` scores ``cond_hit_rate`` and its baseline. The conditional model here is a test
double (a linear map from the condition to the lattice), trained through the real stages on the tiny dataset,
whose property column is ``density``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from bench.models.base import GenerativeModule
from omegaconf import OmegaConf, open_dict
from pymatgen.core import Lattice, Structure

from bench.conditioning import ConditionRequestError, condition_columns, condition_tag, split_counts
from bench.config import compose, config_hash, training_hash
from bench.metrics import CondHitRate, ConditionTargets, GeneratedSet, MetricSettings, ReferenceSet
from bench.rundirs import sampling_hash
from tests.conftest import tiny_run

TARGETS = [2.0, 3.5, 5.0]  # densities (g/cm^3), inside the tiny training split's range


class TinyConditional(GenerativeModule):
    """A conditional test double: atom types from learnt per-slot logits, fractional coordinates uniform, the
    standardised lattice a linear function of the standardised condition (plus a little noise). Without a
    condition it draws one from N(0, 1), the standardised training distribution's first two moments. Every
    condition it samples at is kept in :attr:`received`, so a test can see what the sample stage passed."""

    family = "test"
    paper = "test double"
    conditional = True
    received: ClassVar[list[torch.Tensor]] = []

    def __init__(
        self, optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer], num_types: int,
        max_atoms: int, condition_dim: int,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        self._save_plain_hparams()
        self.condition_dim = int(condition_dim)
        self.type_logits = torch.nn.Parameter(torch.zeros(max_atoms, num_types))
        self.to_lattice = torch.nn.Linear(condition_dim, 6)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.type_logits.expand(batch["atom_types"].shape[0], -1, -1)
        labels = batch["atom_types"].argmax(-1).flatten()
        types = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels)
        lattice = torch.nn.functional.mse_loss(self.to_lattice(batch["condition"]), batch["lattice"])
        return {"loss": types + lattice, "types": types, "lattice": lattice}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, torch.Tensor]:
        if condition is None:
            condition = self._randn((n, self.condition_dim), generator)
        TinyConditional.received.append(condition.detach().cpu().clone())
        probs = torch.softmax(self.type_logits, -1).expand(n, -1, -1).flatten(0, 1).cpu()
        types = torch.multinomial(probs, 1, generator=generator).view(n, self.max_atoms).to(self.device)
        scores = torch.nn.functional.one_hot(types, self.num_types).float()
        lattice = self.to_lattice(condition) + 0.01 * self._randn((n, 6), generator)
        return {"atom_types": scores, "frac_coords": self._rand((n, self.max_atoms, 3), generator),
                "lattice": lattice}


def _model_node(condition: Any = ("${dataset.property}",)) -> Any:
    """The test double's model config; ``condition`` as a conditional model's config names it."""
    node = {"name": "tiny_cond", "family": "test", "variant": "linear-lattice", "card": None,
            "module": {"_target_": f"{__name__}.TinyConditional",
                       "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.05}}}
    if condition is not None:
        node["condition"] = list(condition)
    return OmegaConf.create(node)


def _cfg(tmp_path: Path, *overrides: str, model: Any = "double"):
    """The tiny config with the conditional test double (``model="double"``), another model node, or the
    composed one (``model=None``)."""
    cfg = compose(tiny_run(tmp_path, *overrides, steps=30, samples=10, sample_batch=4))
    if model is not None:
        cfg.model = _model_node() if model == "double" else model
    return cfg


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny output folder holding a trained run of the conditional test double."""
    from bench.train import train

    root = tmp_path_factory.mktemp("conditional")
    summary = train(_cfg(root))
    assert summary["steps"] == 30 and summary["loss_last"] < summary["loss_first"]
    return root


# --- config: which property a conditional model uses --------------------------------------------------------


def test_the_model_s_condition_follows_the_dataset_and_enters_the_representation(trained: Path) -> None:
    from bench.datasets.tiny import tiny_structures

    from bench.rundirs import find_trained_run

    cfg = _cfg(trained)
    run_dir = find_trained_run(cfg)
    codec = json.loads((run_dir / "codec.json").read_text())
    assert codec["condition"]["columns"] == ["density"]
    densities = np.array([s.density for s in tiny_structures("train")])
    np.testing.assert_allclose(codec["condition"]["mean"], [densities.mean()], rtol=1e-6)
    np.testing.assert_allclose(codec["condition"]["std"], [densities.std()], rtol=1e-6)
    # the config is saved as composed: the condition is the model's, resolved against the dataset
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert list(saved.model.condition) == ["density"] and list(saved.representation.condition) == []
    # the same model config conditions on whichever property the dataset names
    assert condition_columns(cfg) == ("density",)
    assert condition_columns(_cfg(trained, "dataset.property=volume")) == ("volume",)
    assert condition_columns(_cfg(trained, model=None)) == ()  # the default model (ddpm) has none


def test_unconditional_configs_are_untouched() -> None:
    published = {"vae": "a85ccb16af4d8fa3", "wgan_gp": "ade4a72aae59122a", "ddpm": "cd0760c0cb2d8ae9",
                 "realnvp": "f29154cad773f7a8"}
    for name, value in published.items():
        cfg = compose([f"model={name}", "experiment=perov_5_offline", "seed=0"])
        assert config_hash(cfg) == value
        assert "condition" not in cfg.sample and "condition" not in cfg.evaluate


def test_a_conditional_model_without_a_property_is_refused_in_one_line(tmp_path: Path) -> None:
    from bench.train import train

    with pytest.raises(ConditionRequestError) as err:
        train(_cfg(tmp_path, "dataset.property=null"))
    assert "dataset.property" in _one_line(err)
    with pytest.raises(ConditionRequestError) as err:
        train(_cfg(tmp_path, model=_model_node(condition=None)))
    assert "is conditional and no condition column is set" in _one_line(err)
    with pytest.raises(ConditionRequestError) as err:
        train(_cfg(tmp_path, "representation.condition=[volume]"))
    assert "disagree" in _one_line(err)


def test_an_unconditional_model_given_a_model_condition_is_refused(tmp_path: Path) -> None:
    from bench.train import train

    cfg = _cfg(tmp_path, "model=vae", model=None)
    with open_dict(cfg.model):
        cfg.model.condition = ["${dataset.property}"]
    with pytest.raises(ConditionRequestError) as err:
        train(cfg)
    assert "is unconditional" in _one_line(err)


# --- sampling at requested values ---------------------------------------------------------------------------


def test_split_counts_spreads_the_remainder_over_the_first_targets() -> None:
    assert split_counts(10, 3) == [4, 3, 3]
    assert split_counts(3, 3) == [1, 1, 1]
    assert split_counts(7, 1) == [7]
    assert all(sum(split_counts(n, k)) == n for n in range(1, 30) for k in range(1, 8))


def test_sampling_splits_n_over_the_targets_and_writes_them(trained: Path) -> None:
    from bench.sample import sample
    from bench.structures_io import read_samples

    values = ",".join(str(v) for v in TARGETS)
    cfg = _cfg(trained, f"+sample.condition.density=[{values}]")
    TinyConditional.received.clear()
    summary = sample(cfg)
    path = Path(summary["path"])
    assert path.name == "samples+density=2,3.5,5.csv"
    assert summary["condition"] == {"density": TARGETS} and summary["condition_counts"] == [4, 3, 3]
    assert summary["variant"] == "linear-lattice+density=2,3.5,5"

    # what the model received: the requested values standardised with the fitted scaler, in batches of 4
    codec = json.loads((path.parent / "codec.json").read_text())["condition"]
    per_item = np.repeat(TARGETS, [4, 3, 3])
    expected = (per_item - codec["mean"][0]) / codec["std"][0]
    assert [len(c) for c in TinyConditional.received] == [4, 4, 2]
    got = torch.cat(TinyConditional.received)
    assert got.shape == (10, 1)
    np.testing.assert_allclose(got[:, 0].numpy(), expected, rtol=1e-5)

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["condition_density"]) for r in rows] == per_item.tolist()
    samples = read_samples(path)
    assert samples.conditions == {"density": per_item.tolist()}
    assert samples.meta["condition"] == {"density": TARGETS}

    # the unconditional samples of the same run: no condition passed, no column, another file and hash
    TinyConditional.received.clear()
    plain_cfg = _cfg(trained)
    plain = sample(plain_cfg)
    assert Path(plain["path"]).name == "samples.csv" and "condition" not in plain
    assert not read_samples(plain["path"]).conditions
    drawn = torch.cat(TinyConditional.received)[:, 0].numpy()
    assert not np.allclose(drawn, expected[: len(drawn)])  # the model drew its own conditions
    assert sampling_hash(cfg) != sampling_hash(plain_cfg) == plain["sampling_hash"]
    assert summary["sampling_hash"] == sampling_hash(cfg)


def test_the_sampling_hash_follows_the_requested_values_not_their_spelling() -> None:
    base = compose(["model=vae"])
    asked = compose(["model=vae", "+sample.condition.heat_ref=[-1,0,1]"])
    same = compose(["model=vae", "+sample.condition.heat_ref=[-1.0,0.0,1.0]"])
    other = compose(["model=vae", "+sample.condition.heat_ref=[-1.0,0.0,2.0]"])
    assert sampling_hash(asked) == sampling_hash(same) != sampling_hash(other)
    assert sampling_hash(asked) != sampling_hash(base)
    assert config_hash(asked) != config_hash(base) and training_hash(asked) == training_hash(base)
    assert condition_tag({"heat_ref": [-1.0, 0.0, 1.5]}) == "heat_ref=-1,0,1.5"
    assert condition_tag({"a": list(range(40))}).startswith("condition-")


def test_sampling_refusals_are_one_line(trained: Path, tmp_path: Path) -> None:
    from bench.sample import sample
    from bench.train import train

    with pytest.raises(ConditionRequestError) as err:
        sample(_cfg(trained, "+sample.condition.volume=[10.0]"))
    assert "sample.condition.volume" in _one_line(err) and "['density']" in _one_line(err)
    with pytest.raises(ConditionRequestError) as err:
        sample(_cfg(trained, "+sample.condition.density=[1.0,2.0,3.0]", "sample.num_samples=2"))
    assert "fewer than the 3 requested values" in _one_line(err)
    with pytest.raises(ConditionRequestError) as err:
        sample(_cfg(trained, "+sample.condition.density=[high]"))
    assert "not a number" in _one_line(err)

    vae = ["model=vae", "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1",
           "model.module.backbone.n_heads=2", "trainer.max_steps=2"]
    train(_cfg(tmp_path, *vae, model=None))
    with pytest.raises(ConditionRequestError) as err:
        sample(_cfg(tmp_path, *vae, "+sample.condition.density=[2.0]", model=None))
    assert "model vae is unconditional" in _one_line(err) and "leave out sample.condition" in _one_line(err)


def test_the_command_line_shows_condition_errors_as_one_line() -> None:
    from bench.datasets import ConditionError

    from bench.cli import _user_error

    assert _user_error(ConditionRequestError("x: y")) == "ConditionRequestError: x: y"
    assert _user_error(ConditionError("x: y")) == "ConditionError: x: y"


def test_base_module_takes_a_condition_only_when_conditional() -> None:
    from bench.datasets.codec import CrystalCodec
    from bench.datasets.tiny import tiny_structures

    codec = CrystalCodec(max_atoms=8, condition=["density"])
    train = tiny_structures("train")
    codec.fit(train, {"density": np.array([s.density for s in train])})
    model = TinyConditional(lambda p: torch.optim.Adam(p), codec.num_types, codec.max_atoms, 1)
    out = model.sample(3, generator=torch.Generator().manual_seed(0), condition=torch.zeros(3, 1))
    assert out["lattice"].shape == (3, 6)
    with pytest.raises(ValueError, match=r"condition must be \[n, C\] = \[3, C\]"):
        model.sample(3, condition=torch.zeros(2, 1))


# --- the conditional metric ---------------------------------------------------------------------------------


def _rocksalt(cation: str, anion: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _too_close() -> Structure:
    return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])


STUB = {"NaCl": 1.0, "KCl": 2.0, "MgO": 3.0}


def _stub(structures: list[Structure]) -> np.ndarray:
    """A property predictor with known answers: a value per reduced formula."""
    return np.array([STUB[s.composition.reduced_formula] for s in structures])


@pytest.fixture(scope="module")
def items() -> list[Structure | None]:
    """Valid NaCl, KCl, MgO rock salts, an invalid pair of atoms 0.3 Å apart, an item that was never built,
    and NaCl again."""
    nacl = _rocksalt("Na", "Cl", 5.64)
    return [nacl, _rocksalt("K", "Cl", 6.29), _rocksalt("Mg", "O", 4.21), _too_close(), None, nacl.copy()]


def test_cond_hit_rate_of_requested_samples_on_a_known_case(items: list[Structure | None]) -> None:
    requested = [1.0, 1.0, 2.0, 2.0, 3.0, 1.2]
    targets = ConditionTargets.sampled("p", {"p": requested}, {"p": [1.0, 2.0, 3.0, 1.2]}, window=0.25)
    targets = targets.resolve(ReferenceSet("toy", [], [], properties={"train": {"p": [0.0, 2.0]}}))
    assert targets.half_width == 0.25 and targets.train_std == 1.0
    gset = GeneratedSet(items)
    assert gset.flags("valid").tolist() == [True, True, True, False, False, True]
    result = CondHitRate(MetricSettings(property="p"), targets, predictor=_stub)(gset, {})
    # hits: NaCl asked 1.0 (predicted 1.0) and NaCl asked 1.2 (|1.0 - 1.2| <= 0.25); KCl asked 1.0 and MgO
    # asked 2.0 are off by 1; the invalid and the unbuilt items are misses
    assert result.value == pytest.approx(2 / 6)
    rows = {row["target"]: row for row in result.extra["per_target"]}
    assert [rows[t]["n"] for t in (1.0, 2.0, 3.0, 1.2)] == [2, 2, 1, 1]
    assert [rows[t]["n_hit"] for t in (1.0, 2.0, 3.0, 1.2)] == [1, 0, 0, 1]
    assert rows[1.0]["hit_rate"] == 0.5 and rows[2.0]["n_valid"] == 1 and rows[3.0]["n_valid"] == 0
    assert rows[1.0]["mean_abs_deviation"] == pytest.approx(0.5)  # |1-1| and |2-1|
    assert math.isnan(rows[3.0]["predicted_mean"])
    assert result.per_sample.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert result.extra["window"] == 0.25 and result.extra["window_rule"].startswith("given")
    np.testing.assert_allclose(result.extra["per_sample_columns"]["cond_predicted_p"],
                               [1.0, 2.0, 3.0, np.nan, np.nan, 1.0])
    # a window of 1.0 (the default 0.5 x a training std of 2) catches KCl and MgO too
    wide = ConditionTargets.sampled("p", {"p": requested}).resolve(
        ReferenceSet("toy", [], [], properties={"train": {"p": [-1.0, 3.0]}}))
    assert wide.half_width == 1.0 and wide.targets == (1.0, 2.0, 3.0, 1.2)
    wide_result = CondHitRate(MetricSettings(property="p"), wide, predictor=_stub)(gset, {})
    assert wide_result.value == pytest.approx(4 / 6)


def test_the_baseline_is_the_share_of_all_samples_in_each_window(items: list[Structure | None]) -> None:
    targets = ConditionTargets.baseline("p", [1.0, 2.0, 5.0], window=0.5).resolve(ReferenceSet("toy", [], []))
    result = CondHitRate(MetricSettings(property="p"), targets, predictor=_stub)(GeneratedSet(items), {})
    # valid predictions: 1.0, 2.0, 3.0, 1.0 among 6 items -> 2/6 near 1.0, 1/6 near 2.0, 0 near 5.0
    assert [row["hit_rate"] for row in result.extra["per_target"]] == pytest.approx([2 / 6, 1 / 6, 0.0])
    assert result.value == pytest.approx((2 / 6 + 1 / 6) / 3)
    assert result.extra["source"] == "evaluation" and result.per_sample is None


def test_cond_hit_rate_is_undefined_with_a_reason_when_it_cannot_be_scored(items: list) -> None:
    gset = GeneratedSet(items)
    metric = CondHitRate(MetricSettings(property="p"), None, predictor=_stub)
    assert "no targets" in metric(gset, {}).extra["reason"]
    other = ConditionTargets.sampled("p", {"q": [1.0] * 6})
    assert "predicts p" in CondHitRate(MetricSettings(property="p"), other, _stub)(gset, {}).extra["reason"]
    unscaled = ConditionTargets.baseline("p", [1.0]).resolve(ReferenceSet("toy", [], []))
    result = CondHitRate(MetricSettings(property="p"), unscaled, _stub)(gset, {})
    assert math.isnan(result.value) and "condition_window" in result.extra["reason"]


# --- evaluate: the metric in the record ---------------------------------------------------------------------


def _per_sample(record_path: Path) -> list[dict[str, str]]:
    with open(record_path.with_suffix(".samples.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_scores_requested_samples_and_the_baseline(trained: Path) -> None:
    from bench.evaluate import evaluate
    from bench.sample import sample

    values = ",".join(str(v) for v in TARGETS)
    cfg = _cfg(trained, f"+sample.condition.density=[{values}]")
    sample(cfg)
    record, path = evaluate(cfg)
    entry = record.metrics["cond_hit_rate"]
    settings = record.metric_settings["condition"]
    from bench.datasets.tiny import tiny_structures

    train_std = float(np.std([s.density for s in tiny_structures("train")]))
    assert settings["source"] == "sampling" and settings["targets"] == TARGETS
    assert settings["window"] == pytest.approx(0.5 * train_std)
    assert [row["n"] for row in entry["per_target"]] == [4, 3, 3]
    assert record.variant == "linear-lattice+density=2,3.5,5"
    rows = _per_sample(path)
    hits = [r["cond_hit_rate"] == "True" for r in rows]
    recomputed = [r["valid"] == "True" and abs(float(r["cond_predicted_density"])
                                               - float(r["condition_density"])) <= settings["window"]
                  for r in rows]
    assert hits == recomputed and entry["value"] == pytest.approx(sum(hits) / 10)
    assert 0 <= entry["predictor_ceiling"] <= 1 and entry["mae_test"] >= 0

    # the same file scored against other targets is refused; the unconditional file gives the baseline
    with pytest.raises(ConditionRequestError) as err:
        evaluate(_cfg(trained, f"+sample.condition.density=[{values}]", "+evaluate.condition.density=[1.0]"))
    assert "leave out evaluate.condition" in _one_line(err)
    sample(_cfg(trained))
    base_cfg = _cfg(trained, f"+evaluate.condition.density=[{values}]", "+evaluate.condition_window=0.5")
    base, base_path = evaluate(base_cfg)
    assert base.variant == "linear-lattice+windows:density=2,3.5,5+window=0.5"
    assert base.metric_settings["condition"]["source"] == "evaluation"
    rows = _per_sample(base_path)
    predicted = [float(r["cond_predicted_density"]) if r["valid"] == "True" else math.nan for r in rows]
    shares = [sum(abs(p - t) <= 0.5 for p in predicted) / len(rows) for t in TARGETS]
    got = base.metrics["cond_hit_rate"]
    assert [row["hit_rate"] for row in got["per_target"]] == pytest.approx(shares)
    assert got["value"] == pytest.approx(sum(shares) / 3)
    assert base.config_hash != config_hash(_cfg(trained))  # its own record, beside the plain one
    with pytest.raises(ConditionRequestError) as err:
        evaluate(_cfg(trained, "+evaluate.condition.volume=[10.0]"))
    assert "predicts density" in _one_line(err)
