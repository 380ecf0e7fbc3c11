"""``dcgan`` on inputs with an independently known answer.

- the networks obey the paper's architecture rules (read off the module tree): no pooling, transposed
  convolutions in the generator and strided convolutions in the discriminator, batch norm everywhere except
  the generator's output and the discriminator's input, ReLU / LeakyReLU 0.2, no fully connected hidden
  layer besides the projection of ``z``, ``N(0, 0.02)`` weights, Adam 2e-4 / beta1 0.5, the non-saturating
  loss;
- each matrix axis is doubled by stride-2 layers as the card states (Perov-5's rows 8 -> 16 -> 32 -> 64 and
  its 5 sites kept; Carbon-24's sites 3 -> 6 -> 12 -> 24) and the output is exactly ``H x W``;
- trained on a toy crystal distribution with known moments (two filled slots, the second's element a fair
  coin, a standard normal lattice length), the generator matches them, which the untrained one does not;
- the matrix output decoded by the representation and the codec-field output decoded by the codec are the
  same crystals; through the real train and sample stages the run reloads with the matrix representation.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from bench.datasets.codec import CrystalCodec
from bench.datasets.crystal_matrix import CrystalMatrix, CrystalMatrixLayout
from bench.datasets.representation import CLASS_KEY, DecodeFailure
from bench.datasets.tiny import tiny_structures
from bench.models.gan.dcgan import CrystalDCGAN, MatrixDiscriminator, MatrixGenerator, axis_plan
from hydra.utils import instantiate
from pymatgen.core import Structure
from torch import nn

from bench.config import compose
from tests.conftest import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

PEROV, CARBON = (57, 5), (2, 24)  # (num_types, max_atoms): matrices 62 x 5 and 7 x 24


def _model(sizes: tuple[int, int], *overrides: str, **kwargs: object) -> CrystalDCGAN:
    """The model as its config builds it (``conf/model/dcgan.yaml``) for a dataset's sizes."""
    cfg = compose(["model=dcgan", *overrides])
    return instantiate(cfg.model.module, num_types=sizes[0], max_atoms=sizes[1], **kwargs)


def _kinds(net: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in net]


# --- the architecture ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [PEROV, CARBON])
def test_the_networks_follow_the_paper_s_architecture_rules(sizes: tuple[int, int]) -> None:
    model = _model(sizes)
    layers = model.n_layers
    assert layers == 3 and model.noise_dim == 100
    every = [type(m).__name__ for m in model.modules()]
    assert not [name for name in every if "Pool" in name or "Dropout" in name]

    # generator: project z (the only linear map), BN, ReLU; then (ConvT, BN, ReLU) * (L - 1); a linear ConvT
    generator = model.generator.net
    expected = ["Linear", "Unflatten", "BatchNorm2d", "ReLU"]
    expected += ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * (layers - 1) + ["ConvTranspose2d"]
    assert _kinds(generator) == expected
    assert generator[0].in_features == model.noise_dim
    assert generator[-1].out_channels == 1  # no batch norm and no activation after the output layer

    # discriminator: Conv, LeakyReLU (no BN on the input layer); (Conv, BN, LeakyReLU) * (L - 1); one logit
    critic = model.critic.net
    expected = ["Unflatten", "Conv2d", "LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * (layers - 1)
    assert _kinds(critic) == [*expected, "Flatten", "Linear"]
    assert critic[-1].out_features == 1
    assert all(m.negative_slope == 0.2 for m in critic if isinstance(m, nn.LeakyReLU))
    assert not any(isinstance(m, nn.ReLU | nn.Tanh | nn.Sigmoid) for m in critic)
    assert not any(isinstance(m, nn.LeakyReLU | nn.Tanh | nn.Sigmoid) for m in generator)

    # no pooling: the size changes only through stride-2 convolutions, and some axis is strided
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert {s for m in convs for s in m.stride} == {1, 2}

    # the paper's initialisation and optimiser, and its loss with one discriminator step per generator step
    big = [m.weight.detach() for m in convs if m.weight.numel() > 10_000]
    assert big and all(0.018 < float(w.std()) < 0.022 and abs(float(w.mean())) < 1e-3 for w in big)
    generator_opt, critic_opt = model.configure_optimizers()
    for opt in (generator_opt, critic_opt):
        assert isinstance(opt, torch.optim.Adam)
        assert opt.param_groups[0]["lr"] == 2e-4 and opt.param_groups[0]["betas"] == (0.5, 0.999)
    assert model.loss_name == "non_saturating" and model.n_critic == 1 and model.gp_weight == 0.0


def test_each_axis_is_doubled_as_the_card_states() -> None:
    assert axis_plan(62, 3) == (3, 8)   # Perov-5 rows: 8 -> 16 -> 32 -> 64, cropped to 62
    assert axis_plan(5, 3) == (0, 5)    # Perov-5 sites: halving 5 would leave a seed under 3
    assert axis_plan(24, 3) == (3, 3)   # Carbon-24 sites: 3 -> 6 -> 12 -> 24
    assert axis_plan(7, 3) == (1, 4)    # Carbon-24 rows: 4 -> 8, cropped to 7
    assert axis_plan(20, 3) == (2, 5)   # MP-20 sites: 5 -> 10 -> 20
    for shape, maps in [((62, 5), [(8, 5), (16, 5), (32, 5), (64, 5)]),
                        ((7, 24), [(4, 3), (8, 6), (8, 12), (8, 24)])]:
        generator = MatrixGenerator(16, shape, width=4, n_layers=3)
        seen: list[tuple[int, int]] = []
        for m in generator.net:
            if isinstance(m, nn.Unflatten | nn.ConvTranspose2d):
                m.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(tuple(out.shape[2:])))
        out = generator(torch.rand(3, 16))
        assert out.shape == (3, *shape) and seen == maps
        critic = MatrixDiscriminator(shape, width=4, n_layers=3)
        assert critic(out).shape == (3,)


def test_the_discrete_readout_writes_data_like_matrices_with_straight_through_gradients() -> None:
    model = CrystalDCGAN(functools.partial(torch.optim.Adam), num_types=3, max_atoms=2, width=4, n_layers=1)
    layout = model.layout  # K = 2 elements, 2 slots: 8 x 3
    raw = torch.zeros(1, 8, 3)
    raw[0, :2, :2] = torch.tensor([[0.3, -1.0], [0.1, 2.0]])  # slot 0: element 0; slot 1: element 1
    raw[0, layout.coords_rows, :2] = torch.tensor([[1.2, 0.4], [0.5, 0.5], [-0.3, 0.9]])
    raw[0, layout.occupancy_row, :2] = torch.tensor([0.2, -0.7])  # slot 0 filled (logit > 0), slot 1 empty
    raw[0, layout.lengths_row] = torch.tensor([0.5, 0.6, 0.7])
    raw[0, :2, 2] = 5.0  # column 2 holds no site (max_atoms 2): whatever is there is dropped
    raw.requires_grad_(True)
    out = model.discrete_readout(raw)
    expected = torch.zeros(1, 8, 3)
    expected[0, 0, 0] = 1.0
    expected[0, layout.coords_rows, 0] = torch.tensor([1.2, 0.5, -0.3])  # linear (decode wraps them)
    expected[0, layout.occupancy_row, 0] = 1.0
    expected[0, layout.lengths_row] = torch.tensor([0.5, 0.6, 0.7])
    torch.testing.assert_close(out.detach(), expected)
    # straight-through: the element entries pass the softmax's gradient, the occupancy the sigmoid's ...
    (grad,) = torch.autograd.grad(out[0, 0, 0] + out[0, layout.occupancy_row, 1], raw, retain_graph=True)
    p = torch.softmax(torch.tensor([0.3, 0.1]), 0)
    torch.testing.assert_close(grad[0, :2, 0], torch.stack([p[0] * (1 - p[0]), -p[0] * p[1]]))
    s = torch.sigmoid(torch.tensor(-0.7))
    torch.testing.assert_close(grad[0, layout.occupancy_row, 1], s * (1 - s))
    # ... and the zeroed empty slots pass no gradient to the occupancy
    (grad,) = torch.autograd.grad(out[0, :2, :2].sum() + out[0, layout.coords_rows, :2].sum(), raw)
    assert torch.all(grad[0, layout.occupancy_row] == 0)


# --- learning a toy distribution ----------------------------------------------------------------------------

TOY = CrystalMatrixLayout(num_types=3, max_atoms=4)  # elements A, B; matrices 8 x 4


def _toy_matrices(n: int, generator: torch.Generator) -> torch.Tensor:
    """Slots 0 and 1 filled, 2 and 3 empty; slot 0 is A at the origin, slot 1 is A or B (a fair coin) at
    (0.5, 0.5, 0.5); the standardised lattice lengths are one standard normal draw (a = b = c), angles 0."""
    types = torch.zeros(n, 4, 3)
    types[:, 2:, 0] = 1.0
    types[:, 0, 1] = 1.0
    types[torch.arange(n), 1, 1 + (torch.rand(n, generator=generator) < 0.5).long()] = 1.0
    frac = torch.zeros(n, 4, 3)
    frac[:, 1] = 0.5
    lengths = torch.randn(n, 1, generator=generator).expand(n, 3)
    return TOY.encode(types, frac, torch.cat([lengths, torch.zeros(n, 3)], dim=1))


def _toy_moments(model: CrystalDCGAN) -> dict[str, torch.Tensor]:
    matrix = model.sample(2000, generator=torch.Generator().manual_seed(5))["matrix"]
    fields = TOY.to_fields(matrix)
    filled = fields["atom_types"][..., 0] == 0
    return {
        "filled": filled.float().mean(0),
        "b_share": (fields["atom_types"][:, 1].argmax(-1) == 2).float().mean(),
        "length_mean": fields["lattice"][:, 0].mean(),
        "length_std": fields["lattice"][:, 0].std(),
        "slot1_coords": matrix[:, TOY.coords_rows, 1].mean(0),
    }


def _matches_the_toy(moments: dict[str, torch.Tensor]) -> bool:
    return (
        bool(torch.all(moments["filled"][:2] > 0.9) and torch.all(moments["filled"][2:] < 0.1))
        and 0.25 < float(moments["b_share"]) < 0.75  # a collapsed generator gives 0 or 1
        and abs(float(moments["length_mean"])) < 0.25
        and 0.7 < float(moments["length_std"]) < 1.3
        and bool(torch.all((moments["slot1_coords"] - 0.5).abs() < 0.1))
    )


def test_a_short_run_matches_the_moments_of_a_toy_crystal_distribution() -> None:
    data = _toy_matrices(4096, torch.Generator().manual_seed(1000))
    pl.seed_everything(0, verbose=False)
    model = CrystalDCGAN(functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999)), 3, 4, noise_dim=16,
                         width=16, n_layers=2, output="matrix")
    assert not _matches_the_toy(_toy_moments(model))
    loader = torch.utils.data.DataLoader(
        [{"matrix": row} for row in data], batch_size=64, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=600, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)  # 300 batches: 300 discriminator and 300 generator steps
    moments = _toy_moments(model)
    assert _matches_the_toy(moments), moments


# --- outputs, and the real stages ---------------------------------------------------------------------------


def test_matrix_and_crystal_outputs_are_the_same_crystals() -> None:
    structures = tiny_structures("train")
    rep = CrystalMatrix(max_atoms=8).fit(structures)
    codec = CrystalCodec(max_atoms=8).fit(structures)
    torch.manual_seed(0)
    matrix_model = _model((codec.num_types, 8), "model.module.width=4", output="matrix")
    crystal_model = _model((codec.num_types, 8), "model.module.width=4")
    crystal_model.load_state_dict(matrix_model.state_dict())
    # a codec batch and a matrix batch give the discriminator the same input
    batch = codec.encode(structures)
    torch.testing.assert_close(matrix_model.matrix_of(batch), rep.encode(structures)["matrix"])
    with torch.no_grad():  # untrained, the generator's occupancy sits near 0: shift it so that slots fill
        for model in (matrix_model, crystal_model):
            model.generator.net[-1].bias.fill_(0.5)
    matrices = matrix_model.sample(6, generator=torch.Generator().manual_seed(1))
    again = matrix_model.sample(6, generator=torch.Generator().manual_seed(1))
    assert set(matrices) == {"matrix"} and torch.equal(matrices["matrix"], again["matrix"])
    fields = crystal_model.sample(6, generator=torch.Generator().manual_seed(1))
    from_matrix, from_fields = rep.decode(matrices), codec.decode(fields)
    assert any(isinstance(item, Structure) for item in from_matrix)
    for a, b in zip(from_matrix, from_fields, strict=True):
        if isinstance(a, Structure):
            assert a == b
        else:
            assert isinstance(b, DecodeFailure) and a.reason == b.reason
    with pytest.raises(ValueError, match="unconditional"):
        matrix_model.sample(2, condition=torch.zeros(2, 1))


def test_dcgan_trains_and_samples_through_the_real_stages(tmp_path: Path) -> None:
    from bench.sample import sample
    from bench.structures_io import read_samples
    from bench.train import load_trained, train

    own = list(compose(["model=dcgan"]).model.test_overrides)
    cfg = compose(tiny_run(tmp_path, "model=dcgan", *own, steps=20, samples=10, sample_batch=5))
    summary = train(cfg)
    assert summary["steps"] == 20
    assert summary["loss_last"] < summary["loss_first"]  # the discriminator learns to separate, as at first
    run_dir = Path(cfg.paths.run_dir)
    assert json.loads((run_dir / "codec.json").read_text())[CLASS_KEY] == (
        "bench.datasets.crystal_matrix.CrystalMatrix")
    module, rep, _ = load_trained(run_dir)
    assert isinstance(module, CrystalDCGAN) and module.output == "matrix" and isinstance(rep, CrystalMatrix)
    written = sample(cfg)
    samples = read_samples(written["path"])
    assert written["nfe"] == 1 and len(samples.structures) == 10
    assert samples.n_constructed == written["n_decoded"]
    assert all(reason for s, reason in zip(samples.structures, samples.reasons, strict=True) if s is None)
    assert written["decode"]["occupancy_threshold"] == 0.5
