"""The token representation and ``crystal_gpt``, on inputs with an independently known answer.

- real Perov-5 crystals survive encode -> decode within the discretisation the representation states;
- the decoder is causal (changing token k changes no logit before k) and its key/value cache reproduces the
  full forward pass;
- malformed sequences are counted as parse failures (with their reason), never raised, through the samples
  file the evaluate stage reads;
- trained on a toy crystal distribution whose every sequence has probability 1/16, the model's negative
  log-likelihood per crystal approaches ``log 16``;
- temperature -> 0 and top_k = 1 are greedy decoding, computed here independently by argmax over full forward
  passes; the sampler draws from softmax(logits / T) restricted to the top k;
- through the real train and sample stages, the model config selects the token representation and the samples
  file counts the sequences that did not parse.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bench.datasets.representation import CLASS_KEY, DecodeFailure, Representation
from bench.datasets.tokens import BOS, EOS, PAD, PARSE_FAILURE, CrystalTokenizer, CrystalTokens
from bench.models.autoregressive.gpt import CrystalGPT, GPTDecoder
from bench.models.autoregressive.sampling import TokenSampler
from pymatgen.core import Lattice, Structure

from bench.config import compose
from tests.conftest import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _periodic_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-axis distance between fractional coordinates on the torus."""
    return float(np.max(np.abs((a - b + 0.5) % 1.0 - 0.5)))


def _perovskite(a: float = 3.9, origin: float = 0.0) -> Structure:
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"], np.array(coords) + origin)


def _model(
    rep: CrystalTokens, sampler: TokenSampler | None = None, seed: int = 0, **widths: int
) -> CrystalGPT:
    torch.manual_seed(seed)
    settings = {"d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0, **widths}
    return CrystalGPT(functools.partial(torch.optim.Adam, lr=1e-2), sampler or TokenSampler(), **settings,
                      **rep.sizes())


# --- the representation -------------------------------------------------------------------------------------


def test_real_perov5_crystals_round_trip_within_the_stated_discretisation(data_dir: Path) -> None:
    """Lengths within half a lattice bin (``lattice_range / (lattice_bins - 1)`` training standard
    deviations of log a), angles within half a bin of theirs, every site within ``0.5 / coord_bins`` per axis
    of a decoded site of the same element."""
    from bench.datasets import load_split

    structures = load_split("perov_5", "val", data_dir=data_dir, limit=300).structures
    rep = CrystalTokens(max_atoms=5).fit(structures)
    assert isinstance(rep, Representation)
    tokens = rep.encode(structures)["tokens"]
    assert tokens.shape == (len(structures), 28) and tokens.dtype == torch.int64
    decoded = rep.decode({"tokens": tokens})
    half_bin = rep.settings["lattice_range"] / (rep.settings["lattice_bins"] - 1)  # in standard deviations
    std = rep.codec.lattice_std
    length_tol = math.expm1(half_bin * std[:3].max()) + 1e-9
    angle_tol = half_bin * std[3:].max() + 1e-6
    coord_tol = 0.5 / rep.settings["coord_bins"] + 1e-6
    worst = np.zeros(3)
    for original, back in zip(structures, decoded, strict=True):
        assert isinstance(back, Structure), back
        assert back.composition == original.composition
        rel = np.abs(np.array(back.lattice.abc) / np.array(original.lattice.abc) - 1.0)
        angles = np.abs(np.array(back.lattice.angles) - np.array(original.lattice.angles))
        gaps = [min(_periodic_gap(site.frac_coords, other.frac_coords) for other in back
                    if other.species_string == site.species_string) for site in original]
        worst = np.maximum(worst, [rel.max(), angles.max(), max(gaps)])
    assert worst[0] <= length_tol and worst[1] <= angle_tol and worst[2] <= coord_tol, worst
    assert worst[1] == 0.0  # every Perov-5 angle is 90 degrees: a constant parameter is exact (odd bins)
    assert 0.0 < worst[0]  # lengths are rounded, not copied


def test_the_sequence_is_canonical_and_grid_crystals_round_trip_exactly() -> None:
    rep = CrystalTokens(max_atoms=5).fit([_perovskite(3.9), _perovskite(4.1)])
    crystal = _perovskite(3.9)
    shuffled = Structure.from_sites([crystal[i] for i in (3, 1, 4, 0, 2)])
    tokens = rep.encode([crystal, shuffled])["tokens"]
    assert torch.equal(tokens[0], tokens[1])  # a function of the crystal, not of the order of its sites
    row = tokens[0].tolist()
    assert row[0] == BOS and row[27] == EOS and PAD not in row
    tok = rep.tokenizer
    elements = [rep.elements[t - 3] for t in row[7:27:4]]
    assert elements == ["O", "O", "O", "Ti", "Sr"]  # by atomic number (O 8, Ti 22, Sr 38)
    o_coords = [[(t - tok.coord_start) / tok.coord_bins for t in row[p + 1:p + 4]] for p in (7, 11, 15)]
    assert o_coords == sorted(o_coords)  # equal elements by their coordinates
    (back,) = rep.decode({"tokens": tokens[:1]})
    # on the coordinate grid and at a training lattice (a bin edge of a two-point set) nothing is lost
    assert back.lattice.abc == pytest.approx((3.9, 3.9, 3.9), rel=1e-12)
    assert sorted(map(tuple, back.frac_coords.round(12))) == sorted(map(tuple, crystal.frac_coords))


def test_malformed_sequences_are_counted_as_parse_failures_not_raised(tmp_path: Path) -> None:
    """Each malformed sequence decodes to a failure naming what is wrong; written to a samples file, they are
    what the evaluate stage counts as not decoded (``n_requested - n_decoded`` in the record)."""
    from bench.structures_io import read_samples, write_samples_csv

    rep = CrystalTokens(max_atoms=2).fit([_two_atoms(4.2), _two_atoms(4.6)])
    good = rep.encode([_two_atoms(4.4)])["tokens"][0]
    tok = rep.tokenizer
    assert tok.length == 16 and good[11].item() != EOS and good[15].item() == EOS
    element, lattice, coordinate = good[7].item(), good[1].item(), good[8].item()

    def edited(**changes: int) -> torch.Tensor:
        row = good.clone()
        for position, token in changes.items():
            row[int(position[1:])] = token
        return row

    cases = {
        "position 0 holds EOS, not BOS": edited(p0=EOS),
        "position 3 holds an element token where a lattice value belongs": edited(p3=element),
        "position 9 holds a lattice token where a coordinate belongs": edited(p9=lattice),
        "EOS before any site": edited(p7=EOS),
        "position 11 holds a coordinate token where an element or EOS belongs": edited(p11=coordinate),
        "too many atoms: an element at position 15 after 2 sites": edited(p15=element),
        "no EOS within the maximum length of 16 tokens (position 15 holds PAD)": edited(p15=PAD),
        f"position 8 holds token id 999 (outside the vocabulary of {tok.vocab_size}) where a coordinate "
        "belongs": edited(p8=999),
    }
    rows = torch.stack([good, *cases.values()])
    decoded = rep.decode({"tokens": rows})
    assert isinstance(decoded[0], Structure) and len(decoded[0]) == 2
    assert all(isinstance(item, DecodeFailure) for item in decoded[1:])
    expected = [f"{PARSE_FAILURE}: {reason}" for reason in cases]
    assert [item.reason for item in decoded[1:]] == expected
    truncated = rep.decode({"tokens": good[:10].unsqueeze(0)})[0]  # shorter than a site needs
    assert truncated.reason == f"{PARSE_FAILURE}: no EOS within the maximum length of 10 tokens"

    path = write_samples_csv(tmp_path / "samples.csv", decoded)
    samples = read_samples(path)
    assert samples.n_constructed == 1 and len(samples.structures) == len(decoded)
    assert samples.reasons[1:] == expected


def _two_atoms(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# --- the decoder --------------------------------------------------------------------------------------------


def test_the_decoder_is_causal_and_its_cache_reproduces_the_full_pass() -> None:
    torch.manual_seed(0)
    net = GPTDecoder(vocab_size=11, context=20, d_model=32, n_layers=2, n_heads=4, dropout=0.0).eval()
    tokens = torch.randint(0, 11, (3, 20))
    k = 9
    changed = tokens.clone()
    changed[:, k] = (tokens[:, k] + 1) % 11
    with torch.no_grad():
        before, _ = net(tokens)
        after, _ = net(changed)
        torch.testing.assert_close(after[:, :k], before[:, :k], rtol=0, atol=1e-6)
        assert (after[:, k] - before[:, k]).abs().max() > 1e-3  # the changed token itself is read at k
        logits, cache = net(tokens[:, :1])
        steps = [logits]
        for t in range(1, 20):
            logits, cache = net(tokens[:, t:t + 1], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), before, rtol=1e-5, atol=1e-5)


def test_trained_nll_approaches_the_entropy_of_a_toy_crystal_distribution() -> None:
    """Cubic cells with a in {4, 5} Å, one Na or Cl at (x, x, 0), x in {0, 1/4, 1/2, 3/4}, all uniform: every
    sequence has probability 1/16 (b, c and y are copies the model must learn to read back), so the negative
    log-likelihood per crystal of fresh draws is log 16 for the true distribution and no lower in
    expectation."""

    def toy(n: int, seed: int) -> list[Structure]:
        g = torch.Generator().manual_seed(seed)
        a = 4.0 + torch.randint(0, 2, (n,), generator=g)
        el = torch.randint(0, 2, (n,), generator=g)
        x = torch.randint(0, 4, (n,), generator=g) / 4
        return [Structure(Lattice.cubic(float(a[i])), [("Na", "Cl")[int(el[i])]], [[float(x[i])] * 2 + [0.0]])
                for i in range(n)]

    entropy = math.log(16)
    rep = CrystalTokens(max_atoms=1).fit(toy(256, 0))
    train, fresh = rep.encode(toy(4096, 1))["tokens"], rep.encode(toy(4096, 2))["tokens"]
    model = _model(rep)
    steps, draw = 300, torch.Generator().manual_seed(3)
    optimizer = model.build_optimizer(model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    with torch.no_grad():
        untrained = float(model.loss({"tokens": fresh})["nll_crystal"])
    for _ in range(steps):
        loss = model.loss({"tokens": train[torch.randint(0, len(train), (128,), generator=draw)]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        terms = model.loss({"tokens": fresh})
    nll = float(terms["nll_crystal"])
    assert untrained > 10 * entropy
    assert entropy - 0.02 < nll < entropy + 0.08, (nll, entropy)
    scored = 11  # six lattice tokens, four of the site, EOS
    assert float(terms["loss"]) == pytest.approx(nll / scored, rel=1e-5)


# --- sampling -----------------------------------------------------------------------------------------------


def _greedy_by_hand(model: CrystalGPT, n: int) -> torch.Tensor:
    """Greedy decoding from full forward passes (no cache, no sampler): argmax of the next-token logits."""
    length = model.tokenizer.length
    tokens = torch.full((n, length), PAD, dtype=torch.int64)
    tokens[:, 0] = BOS
    done = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad():
        for t in range(1, length):
            logits, _ = model.net(tokens[:, :t])
            nxt = torch.where(done, PAD, logits[:, -1].argmax(dim=-1))
            tokens[:, t] = nxt
            done |= nxt == EOS
    return tokens


@pytest.fixture(scope="module")
def tiny_rep() -> CrystalTokens:
    from bench.datasets.tiny import tiny_structures

    return CrystalTokens(max_atoms=8).fit(tiny_structures("train"))


def test_temperature_to_zero_and_top_k_one_are_greedy_decoding(tiny_rep: CrystalTokens) -> None:
    model = _model(tiny_rep, seed=1).eval()
    greedy = _greedy_by_hand(model, 4)

    def draw(sampler: TokenSampler, seed: int = 5) -> torch.Tensor:
        model.sampler = sampler
        return model.sample(4, generator=torch.Generator().manual_seed(seed))["tokens"]

    assert torch.equal(draw(TokenSampler(temperature=0.0)), greedy)
    assert torch.equal(draw(TokenSampler(temperature=1e-6)), greedy)
    assert torch.equal(draw(TokenSampler(temperature=1.0, top_k=1)), greedy)
    assert torch.equal(draw(TokenSampler(temperature=2.0, top_k=1), seed=9), greedy)
    assert not torch.equal(draw(TokenSampler(temperature=1.0)), greedy)  # sampling proper is not greedy


def test_the_sampler_draws_from_the_tempered_top_k_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    n = 40000
    uniform = torch.rand((n, 5), generator=torch.Generator().manual_seed(0))
    sampler = TokenSampler(temperature=0.5, top_k=3)
    counts = torch.bincount(sampler.choose(logits.expand(n, -1), uniform), minlength=5) / n
    kept = torch.tensor([2.0, 1.0, 0.5]) / 0.5  # the three largest logits, tempered
    expected = torch.zeros(5)
    expected[[0, 1, 4]] = torch.softmax(kept, dim=0)
    torch.testing.assert_close(counts, expected, rtol=0, atol=0.01)
    torch.testing.assert_close(sampler.probabilities(logits)[0], expected)
    allowed = torch.tensor([False, True, True, True, False])  # the grammar's mask is applied before the top k
    counts = torch.bincount(sampler.choose(logits.expand(n, -1), uniform, allowed), minlength=5) / n
    expected = torch.zeros(5)
    expected[[1, 2, 3]] = torch.softmax(torch.tensor([1.0, 0.0, -1.0]) / 0.5, dim=0)
    torch.testing.assert_close(counts, expected, rtol=0, atol=0.01)
    with pytest.raises(ValueError, match="temperature"):
        TokenSampler(temperature=-1.0)


def test_constrained_decoding_always_parses_and_unconstrained_rarely_does(tiny_rep: CrystalTokens) -> None:
    """An untrained model draws nearly uniformly over the vocabulary: without the grammar nearly every
    sequence fails to parse; with it (``constrained: true``) none does."""
    tok: CrystalTokenizer = tiny_rep.tokenizer
    free = _model(tiny_rep, TokenSampler()).sample(32, generator=torch.Generator().manual_seed(0))
    parsed = tok.parse(free["tokens"])
    assert parsed.n_failed >= 30
    constrained = _model(tiny_rep, TokenSampler(constrained=True))
    tokens = constrained.sample(32, generator=torch.Generator().manual_seed(0))["tokens"]
    assert tok.parse(tokens).n_failed == 0
    assert all(tok.grammar()[t, tokens[b, t]] for b in range(32) for t in range(tok.length)
               if tokens[b, t] != PAD)
    items = tiny_rep.decode({"tokens": tokens})
    assert not any(isinstance(i, DecodeFailure) and i.reason.startswith(PARSE_FAILURE) for i in items)


def test_a_model_built_on_the_crystal_codec_returns_its_fields(tiny_rep: CrystalTokens) -> None:
    """Without the token representation (``representation=crystal``) the model reads the codec's batch and
    returns its fields; a sequence that does not parse is an empty cell, which the codec counts as failed."""
    from bench.datasets.codec import CrystalCodec
    from bench.datasets.tiny import tiny_structures

    codec = CrystalCodec(max_atoms=8).fit(tiny_structures("train"))
    model = _model(tiny_rep, TokenSampler(temperature=0.0))
    batch = codec.encode(tiny_structures("train"))
    assert torch.equal(model.tokens_of(batch), tiny_rep.encode(tiny_structures("train"))["tokens"])
    crystal = CrystalGPT(functools.partial(torch.optim.Adam), TokenSampler(temperature=0.0), d_model=32,
                         n_layers=2, n_heads=2, dropout=0.0, num_types=codec.num_types, max_atoms=8)
    crystal.load_state_dict(model.state_dict())
    fields = crystal.sample(3, generator=torch.Generator().manual_seed(0))
    tokens = model.sample(3, generator=torch.Generator().manual_seed(0))["tokens"]
    parsed = model.tokenizer.parse(tokens)
    assert set(fields) == {"atom_types", "frac_coords", "lattice", "mask"}
    assert torch.equal(fields["atom_types"].argmax(-1), torch.as_tensor(parsed.classes))
    for item, reason in zip(codec.decode(fields), parsed.reasons, strict=True):
        assert (reason is None) or (isinstance(item, DecodeFailure) and item.reason.startswith("empty cell"))


# --- the config and the real stages -------------------------------------------------------------------------


def test_the_config_chooses_the_token_representation_and_the_sampler_settings() -> None:
    cfg = compose(["model=crystal_gpt"])
    assert cfg.representation._target_ == "bench.datasets.tokens.CrystalTokens"
    assert cfg.model.family == "autoregressive"
    assert cfg.model.module.sampler.temperature == 1.0 and cfg.model.module.sampler.top_k is None
    assert cfg.model.module.sampler.constrained is False
    assert compose(["model=crystal_gpt", "representation=crystal"]).representation._target_.endswith(
        "CrystalCodec")  # an explicit choice wins
    assert compose(["model=vae"]).representation._target_.endswith("CrystalCodec")


def test_crystal_gpt_trains_samples_and_counts_parse_failures_through_the_real_stages(tmp_path: Path) -> None:
    from bench.sample import sample
    from bench.structures_io import read_samples
    from bench.train import load_trained, train

    own = list(compose(["model=crystal_gpt"]).model.test_overrides)
    overrides = tiny_run(tmp_path, "model=crystal_gpt", *own, steps=30, samples=12, sample_batch=6, batch=16)
    cfg = compose(overrides)
    summary = train(cfg)
    assert summary["steps"] == 30 and summary["loss_last"] < summary["loss_first"]
    run_dir = Path(cfg.paths.run_dir)
    saved = json.loads((run_dir / "codec.json").read_text())
    assert saved[CLASS_KEY] == "bench.datasets.tokens.CrystalTokens"
    module, rep, _ = load_trained(run_dir)
    assert isinstance(module, CrystalGPT) and module.output == "tokens" and isinstance(rep, CrystalTokens)

    written = sample(cfg)
    samples = read_samples(written["path"])
    assert written["nfe"] == rep.tokenizer.length - 1 and len(samples.structures) == 12
    assert samples.n_constructed == written["n_decoded"]
    failed = [r for s, r in zip(samples.structures, samples.reasons, strict=True) if s is None]
    assert all(r for r in failed)
    assert written["decode"]["coord_bins"] == 100  # the grammar's settings travel with the samples

    greedy = compose([*overrides, "model.module.sampler.temperature=0"])
    again = sample(greedy)  # a sampler setting: the same training, samples of their own
    assert Path(again["path"]).name == "samples+token-temperature0.csv"
    assert again["training_hash"] == written["training_hash"]
    assert again["sampling_hash"] != written["sampling_hash"]
