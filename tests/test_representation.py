"""The representation interface: the crystal codec as the default representation, its condition channel, the
class path saved with a fitted representation, the config hashes it leaves alone, and a token-sequence test
double (an autoregressive model's representation) trained end to end through the real train and sample
stages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from bench.datasets import tiny_structures
from bench.datasets.codec import CrystalCodec
from bench.datasets.representation import (
    CLASS_KEY,
    ConditionError,
    DecodeFailure,
    Field,
    Representation,
    load_representation,
    representation_state,
)
from omegaconf import OmegaConf
from pymatgen.core import Element, Lattice, Structure

from bench.config import (
    DEFAULT_REPRESENTATION,
    compose,
    config_hash,
    representation_node,
    resolved,
    training_hash,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_WIDTHS = [
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2",
]


def _cfg(tmp_path: Path, *overrides: str):
    return compose([
        "dataset=tiny", "logger=none", "trainer.enable_progress_bar=false", "train.batch_size=8",
        "sample.num_samples=8", "sample.batch_size=4", "record.regenerate_board=false",
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.leaderboard_dir={tmp_path / 'board'}", *overrides,
    ])


def _density(structures: Sequence[Structure]) -> np.ndarray:
    return np.array([s.density for s in structures], dtype=np.float64)


# --- the crystal codec is a representation ------------------------------------------------------------------


def test_crystal_codec_implements_the_protocol() -> None:
    structures = tiny_structures("train")
    codec = CrystalCodec(max_atoms=8).fit(structures)
    assert isinstance(codec, Representation) and codec.condition == ()
    batch = codec.encode(structures)
    fields = codec.fields()
    assert set(batch) == set(fields) == {"atom_types", "frac_coords", "lattice", "mask"}  # no condition
    for key, field in fields.items():
        assert tuple(batch[key].shape) == (len(structures), *field.shape), key
        assert batch[key].dtype == getattr(torch, field.dtype), key
    assert fields["frac_coords"].kind == "periodic" and fields["atom_types"].kind == "categorical"
    assert codec.sizes() == {"num_types": codec.num_types, "max_atoms": 8}
    # without a condition the saved state is what it was before the condition channel existed
    assert set(codec.state_dict()) == {"max_atoms", "elements", "lattice_mean", "lattice_std"}


def test_saved_state_names_its_class_and_old_states_load_as_the_crystal_codec() -> None:
    structures = tiny_structures("train")
    codec = CrystalCodec(max_atoms=8).fit(structures)
    saved = json.loads(json.dumps(representation_state(codec)))
    assert saved[CLASS_KEY] == "bench.datasets.codec.CrystalCodec"
    for state in (saved, codec.state_dict()):  # with the class path, and as codec.json was written before
        clone = load_representation(state)
        assert type(clone) is CrystalCodec and clone.state_dict() == codec.state_dict()
        assert torch.equal(clone.encode(structures)["lattice"], codec.encode(structures)["lattice"])
    with pytest.raises(ValueError, match="no.such.Representation"):
        load_representation({**saved, CLASS_KEY: "no.such.Representation"})


# --- the condition channel ---------------------------------------------------------------------------------


def test_condition_is_standardised_with_training_statistics_and_round_trips() -> None:
    train = tiny_structures("train")
    props = {"density": _density(train), "volume": np.array([s.volume for s in train])}
    codec = CrystalCodec(max_atoms=8, condition=["density", "volume"]).fit(train, props)
    val = [s for s in tiny_structures("val") if codec.can_encode(s)]
    assert len(val) >= 2
    batch = codec.encode(train, props)
    condition = batch["condition"]
    assert condition.shape == (len(train), 2) and condition.dtype == torch.float32
    torch.testing.assert_close(condition.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(condition.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    assert codec.fields()["condition"] == Field((2,), "condition")
    assert codec.sizes()["condition_dim"] == 2
    back = codec.conditioner.inverse(condition)
    np.testing.assert_allclose(back["density"], props["density"], rtol=1e-5)
    np.testing.assert_allclose(back["volume"], props["volume"], rtol=1e-5)
    # other structures are scaled with the training statistics, not their own
    val_props = {"density": _density(val), "volume": np.array([s.volume for s in val])}
    expected = (val_props["density"] - props["density"].mean()) / props["density"].std()
    np.testing.assert_allclose(codec.encode(val, val_props)["condition"][:, 0].numpy(), expected, rtol=1e-5)
    # the fitted statistics are saved with the codec
    clone = load_representation(json.loads(json.dumps(representation_state(codec))))
    assert clone.condition == ("density", "volume")
    assert torch.equal(clone.encode(train, props)["condition"], condition)
    # decoding ignores the condition: the structures are the same with or without it
    plain = CrystalCodec(max_atoms=8).fit(train)
    assert [s.formula for s in codec.decode(batch)] == [s.formula for s in plain.decode(plain.encode(train))]


def test_a_missing_condition_column_is_named_with_the_available_ones() -> None:
    structures = tiny_structures("train")
    props = {"density": _density(structures), "band_gap": np.zeros(len(structures))}
    with pytest.raises(ConditionError, match=r"'heat_ref' .*available: band_gap, density"):
        CrystalCodec(max_atoms=8, condition=["heat_ref"]).fit(structures, props)
    with pytest.raises(ConditionError, match=r"'heat_ref' .*available: none"):
        CrystalCodec(max_atoms=8, condition=["heat_ref"]).fit(structures)
    holes = {"density": np.where(np.arange(len(structures)) < 3, np.nan, 1.0)}
    with pytest.raises(ConditionError, match=r"'density' has 3 missing"):
        CrystalCodec(max_atoms=8, condition=["density"]).fit(structures, holes)
    codec = CrystalCodec(max_atoms=8, condition=["density"]).fit(structures, props)
    with pytest.raises(ConditionError, match=r"'density' .*available: band_gap"):
        codec.encode(structures, {"band_gap": props["band_gap"]})


def test_condition_from_a_real_dataset_s_property_columns(data_dir: Path) -> None:
    from bench.datasets import load_split

    split = load_split("perov_5", "val", data_dir=data_dir, limit=40)
    assert {"heat_ref", "heat_all", "dir_gap", "ind_gap"} <= set(split.properties)
    codec = CrystalCodec(max_atoms=5, condition=["heat_ref"]).fit(split.structures, split.properties)
    condition = codec.encode(split.structures, split.properties)["condition"]
    np.testing.assert_allclose(codec.conditioner.inverse(condition)["heat_ref"], split.properties["heat_ref"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ConditionError, match=r"'band_gap' .*available: dir_gap, heat_all, heat_ref, ind_gap"):
        CrystalCodec(max_atoms=5, condition=["band_gap"]).fit(split.structures, split.properties)


def test_train_names_the_dataset_when_a_condition_column_is_missing(tmp_path: Path) -> None:
    from bench.train import train

    cfg = _cfg(tmp_path, "model=vae", "representation.condition=[heat_ref]", "trainer.max_steps=1")
    with pytest.raises(ConditionError, match=r"dataset tiny, split train: .*'heat_ref'.*available: density"):
        train(cfg)


def test_an_unconditional_model_refuses_a_condition(tmp_path: Path) -> None:
    from bench.train import train

    cfg = _cfg(tmp_path, "model=vae", "representation.condition=[density]", "trainer.max_steps=1",
               *TINY_WIDTHS)
    with pytest.raises(ValueError, match=r"model vae \(CrystalVAE\) is unconditional"):
        train(cfg)


# --- configuration and hashes -------------------------------------------------------------------------------


def test_the_default_representation_leaves_config_and_training_hashes_unchanged() -> None:
    assert f"representation: {DEFAULT_REPRESENTATION}" in (ROOT / "conf" / "config.yaml").read_text()
    for model in ("vae", "ddpm"):
        cfg = compose([f"model={model}", "experiment=perov_5_offline", "seed=0"])
        assert cfg.representation._target_ == "bench.datasets.codec.CrystalCodec"
        assert cfg.representation.max_atoms == cfg.dataset.max_atoms
        before = resolved(cfg)
        before.pop("representation")  # a config (or record) saved before the representation group existed
        assert config_hash(cfg) == config_hash(before) and training_hash(cfg) == training_hash(before)
        assert representation_node(before) == resolved(cfg)["representation"]
    base = compose(["model=vae", "experiment=perov_5_offline", "seed=0"])
    for change in ("representation.condition=[heat_ref]", "representation.max_atoms=6"):
        other = compose(["model=vae", "experiment=perov_5_offline", "seed=0", change])
        assert config_hash(other) != config_hash(base), change
        assert training_hash(other) != training_hash(base), change
    # the default follows the dataset: tiny's own max_atoms is still the default preset
    tiny = compose(["model=vae", "dataset=tiny"])
    plain = resolved(tiny)
    plain.pop("representation")
    assert config_hash(tiny) == config_hash(plain)


def test_a_run_saved_before_representations_were_configurable_reloads(tmp_path: Path) -> None:
    """codec.json without a class and config.yaml without a representation node: the run is found by its
    training hash and reloads with the crystal codec."""
    from bench.rundirs import find_trained_run, trained_run_files
    from bench.sample import sample
    from bench.train import load_trained, train

    cfg = _cfg(tmp_path, "model=vae", "trainer.max_steps=2", *TINY_WIDTHS)
    train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    config_file, codec_file, _ = trained_run_files(run_dir)
    state = json.loads(codec_file.read_text())
    assert state.pop(CLASS_KEY) == "bench.datasets.codec.CrystalCodec"
    codec_file.write_text(json.dumps(state))
    saved = OmegaConf.load(config_file)
    del saved["representation"]
    config_file.write_text(OmegaConf.to_yaml(saved))  # newer than train_summary.json: the hash is recomputed

    module, codec, _ = load_trained(run_dir)
    assert type(codec) is CrystalCodec and codec.state_dict() == state
    fresh = _cfg(tmp_path, "model=vae", "trainer.max_steps=2", *TINY_WIDTHS)
    assert find_trained_run(fresh) == run_dir
    assert Path(sample(fresh)["path"]).is_file()


# --- another representation: a token sequence for an autoregressive model (a test double) -------------------

PAD, BOS, EOS = 0, 1, 2
_SPECIAL = 3


class TokenSequence:
    """A crystal as tokens: ``BOS``, six lattice tokens (a, b, c, alpha, beta, gamma binned between the
    training minimum and maximum), then ``element x y z`` per site (coordinates binned in [0, 1)), ``EOS``,
    padding.

    Vocabulary: ``PAD, BOS, EOS``, one token per training element, then ``bins`` value tokens.
    """

    def __init__(self, max_atoms: int, bins: int = 32, condition: Sequence[str] = ()) -> None:
        if condition:
            raise ValueError("TokenSequence has no condition channel")
        self.max_atoms, self.bins = int(max_atoms), int(bins)
        self.condition: tuple[str, ...] = ()
        self.elements: list[str] | None = None
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    @property
    def length(self) -> int:
        return 1 + 6 + 4 * self.max_atoms + 1

    @property
    def vocab_size(self) -> int:
        return _SPECIAL + len(self.elements) + self.bins

    def fields(self) -> dict[str, Field]:
        return {"tokens": Field((self.length,), "token", "int64")}

    def sizes(self) -> dict[str, int]:
        return {"vocab_size": self.vocab_size, "length": self.length}

    def fit(
        self, structures: Sequence[Structure], properties: Mapping[str, Any] | None = None
    ) -> TokenSequence:
        seen = {site.specie.symbol for s in structures for site in s}
        self.elements = sorted(seen, key=lambda e: Element(e).Z)
        params = np.array([[*s.lattice.abc, *s.lattice.angles] for s in structures])
        span = params.max(0) - params.min(0)
        self.low, self.high = params.min(0) - 0.05 * span - 1e-3, params.max(0) + 0.05 * span + 1e-3
        return self

    def can_encode(self, structure: Structure) -> bool:
        known = set(self.elements)
        return len(structure) <= self.max_atoms and all(site.specie.symbol in known for site in structure)

    def _value(self, unit: float) -> int:
        return _SPECIAL + len(self.elements) + int(np.clip(np.floor(unit * self.bins), 0, self.bins - 1))

    def encode(self, structures: Sequence[Structure], properties: Mapping[str, Any] | None = None) -> dict:
        tokens = torch.full((len(structures), self.length), PAD, dtype=torch.int64)
        for b, structure in enumerate(structures):
            if not self.can_encode(structure):
                raise ValueError(f"structure {b} cannot be encoded (too many sites or an unknown element)")
            params = np.array([*structure.lattice.abc, *structure.lattice.angles])
            row = [BOS, *(self._value(u) for u in (params - self.low) / (self.high - self.low))]
            sites = sorted(structure, key=lambda site: (site.specie.Z, *np.mod(site.frac_coords, 1.0)))
            for site in sites:
                row.append(_SPECIAL + self.elements.index(site.specie.symbol))
                row.extend(self._value(u) for u in np.mod(site.frac_coords, 1.0))
            row.append(EOS)
            tokens[b, : len(row)] = torch.tensor(row)
        return {"tokens": tokens}

    def decode(self, batch: Mapping[str, Any]) -> list[Structure | DecodeFailure]:
        tokens = np.asarray(batch["tokens"].cpu() if hasattr(batch["tokens"], "cpu") else batch["tokens"])
        return [self._decode_one(b, row.tolist()) for b, row in enumerate(tokens)]

    def _decode_one(self, b: int, row: list[int]) -> Structure | DecodeFailure:
        first_value = _SPECIAL + len(self.elements)

        def unit(token: int) -> float | None:
            return (token - first_value + 0.5) / self.bins if token >= first_value else None

        if row[0] != BOS:
            return DecodeFailure("does not start with BOS", b)
        lattice = [unit(t) for t in row[1:7]]
        if None in lattice:
            return DecodeFailure("a lattice token is not a value", b)
        params = self.low + np.array(lattice) * (self.high - self.low)
        species, coords, pos = [], [], 7
        while pos < len(row) and row[pos] not in (EOS, PAD):
            element, *xyz = row[pos: pos + 4]
            if not _SPECIAL <= element < first_value:
                return DecodeFailure(f"token {pos} should be an element", b)
            if len(xyz) < 3 or None in (xyz := [unit(t) for t in xyz]):
                return DecodeFailure(f"site at token {pos} lacks its three coordinates", b)
            species.append(self.elements[element - _SPECIAL])
            coords.append(xyz)
            pos += 4
        if not species:
            return DecodeFailure("no sites", b)
        try:
            return Structure(Lattice.from_parameters(*params), species, coords)
        except Exception as err:
            return DecodeFailure(f"not a crystal: {err}", b)

    def state_dict(self) -> dict[str, Any]:
        return {"max_atoms": self.max_atoms, "bins": self.bins, "elements": list(self.elements),
                "low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TokenSequence:
        rep = cls(state["max_atoms"], state["bins"])
        rep.elements = list(state["elements"])
        rep.low, rep.high = np.asarray(state["low"]), np.asarray(state["high"])
        return rep


class TinyTokenLM(pl.LightningModule):
    """An autoregressive model of :class:`TokenSequence`: ``p(x_t | x_{t-1}, t)`` (a bigram plus position
    logits), trained by teacher forcing and sampled token by token from the given generator."""

    family = "autoregressive"
    paper = "test double"

    def __init__(
        self, optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer], vocab_size: int,
        length: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.optimizer_factory = optimizer
        self.position = torch.nn.Parameter(torch.zeros(length, vocab_size))
        self.bigram = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def fit_data(self, data: Mapping[str, torch.Tensor]) -> None:
        pass

    @property
    def nfe(self) -> int:
        return self.position.shape[0] - 1

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        logits = self.position[1:] + self.bigram[tokens[:, :-1]]
        return {"loss": torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())}

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)["loss"]
        self.log("train/loss", loss, on_step=True, batch_size=batch["tokens"].shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch)["loss"], batch_size=batch["tokens"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, condition: Any = None) -> dict:
        if condition is not None:
            raise ValueError("TinyTokenLM is unconditional: pass condition=None")
        length = self.position.shape[0]
        tokens = torch.full((n, length), PAD, dtype=torch.int64, device=self.device)
        tokens[:, 0] = BOS
        for t in range(1, length):
            probs = torch.softmax(self.position[t] + self.bigram[tokens[:, t - 1]], dim=-1)
            tokens[:, t] = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(self.device)
        return {"tokens": tokens}


def test_token_sequence_round_trips() -> None:
    structures = tiny_structures("train")
    rep = TokenSequence(max_atoms=8, bins=64).fit(structures)
    assert isinstance(rep, Representation)
    batch = rep.encode(structures)
    assert batch["tokens"].shape == (len(structures), *rep.fields()["tokens"].shape)
    decoded = rep.decode(batch)
    for original, back in zip(structures, decoded, strict=True):
        assert isinstance(back, Structure), back
        assert back.composition == original.composition
        np.testing.assert_allclose(back.lattice.abc, original.lattice.abc, rtol=0.05)
    clone = load_representation(json.loads(json.dumps(representation_state(rep))))
    assert type(clone) is TokenSequence and torch.equal(clone.encode(structures)["tokens"], batch["tokens"])
    broken = batch["tokens"][:3].clone()
    broken[0, 0] = EOS
    broken[1, 7] = EOS
    broken[2, 8] = BOS
    reasons = [item.reason for item in rep.decode({"tokens": broken})]
    assert reasons == ["does not start with BOS", "no sites", "site at token 7 lacks its three coordinates"]


def test_a_token_sequence_model_trains_samples_and_decodes_through_the_real_stages(tmp_path: Path) -> None:
    """train → codec.json with the class path → load_trained → sample → decode → structures in samples.csv."""
    from bench.sample import sample
    from bench.structures_io import read_samples
    from bench.train import load_trained, train

    cfg = _cfg(tmp_path, "trainer.max_steps=200", "train.batch_size=24", "sample.num_samples=16",
               "sample.batch_size=8")
    cfg.representation = OmegaConf.create(
        {"_target_": f"{__name__}.TokenSequence", "max_atoms": "${dataset.max_atoms}", "bins": 32})
    cfg.model = OmegaConf.create({
        "name": "token_lm", "family": "autoregressive", "variant": "bigram-position", "card": None,
        "module": {"_target_": f"{__name__}.TinyTokenLM",
                   "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.1}},
    })
    summary = train(cfg)
    assert summary["steps"] == 200 and summary["loss_last"] < summary["loss_first"]
    run_dir = Path(cfg.paths.run_dir)
    assert run_dir.name.startswith("token_lm_tiny_train_s0__")
    assert json.loads((run_dir / "codec.json").read_text())[CLASS_KEY] == f"{__name__}.TokenSequence"
    module, rep, _ = load_trained(run_dir)
    assert isinstance(module, TinyTokenLM) and isinstance(rep, TokenSequence)

    written = sample(cfg)
    assert written["nfe"] == rep.length - 1 and written["num_samples"] == 16
    assert written["n_decoded"] >= 8  # the representation decoded most samples into structures
    samples = read_samples(written["path"])  # as evaluate reads them (overlapping sites fail as CIFs)
    assert len(samples.structures) == 16
    built = [s for s in samples.structures if s is not None]
    assert len(built) >= 4, [r for r in samples.reasons if r]
    assert all(s is not None or reason for s, reason in zip(samples.structures, samples.reasons, strict=True))
    assert {site.specie.symbol for s in built for site in s} <= set(rep.elements)
    assert Path(sample(cfg)["path"]).read_text() == Path(written["path"]).read_text()  # seeded
