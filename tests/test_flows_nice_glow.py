"""NICE and Glow on inputs with known answers: exact inverses, log-dets equal to the autograd Jacobian's,
actnorm's data-dependent initialisation, the LU mixing's determinant, and maximum likelihood on a Gaussian
whose entropy is known in closed form."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from bench.models.backbone import CrystalTransformer
from bench.models.flow.glow import CrystalGlow
from bench.models.flow.nice import CrystalNICE
from bench.models.flow.realnvp import CrystalRealNVP
from bench.models.flow.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    DiagonalScale,
    FieldAffine,
    FieldTransform,
    FlowSequence,
    GlowAffineCoupling,
    LULinear,
    SlotChannelMixing,
)
from torch import Tensor, nn

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TYPES, MAX_ATOMS = 3, 3
DIMS = MAX_ATOMS * (NUM_TYPES + 3) + 6  # 24: small enough for a dense Jacobian


# ---------------------------------------------------------------------- helpers
def flatten(fields: dict[str, Tensor]) -> Tensor:
    """``[B, D]``: types, then coordinates, then lattice."""
    size = fields["lattice"].shape[0]
    return torch.cat([fields[k].reshape(size, -1) for k in ("atom_types", "frac_coords", "lattice")], dim=1)


def unflatten(vec: Tensor, num_types: int = NUM_TYPES, max_atoms: int = MAX_ATOMS) -> dict[str, Tensor]:
    size, types = vec.shape[0], max_atoms * num_types
    return {
        "atom_types": vec[:, :types].reshape(size, max_atoms, num_types),
        "frac_coords": vec[:, types : types + 3 * max_atoms].reshape(size, max_atoms, 3),
        "lattice": vec[:, types + 3 * max_atoms :],
    }


def random_fields(size: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return unflatten(torch.randn(size, DIMS, generator=g, dtype=torch.float64))


def randomise(module: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Move every parameter away from its (often identity) initialisation, in float64."""
    g = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.eval()


def conditioner(out_scale: int) -> CrystalTransformer:
    return CrystalTransformer(
        NUM_TYPES, MAX_ATOMS, d_model=8, n_layers=1, n_heads=2, out_scale=out_scale, raw_frac=True,
        zero_init=True,
    )


def initialised_actnorm() -> ActNorm:
    layer = ActNorm(NUM_TYPES).double()
    layer(random_fields(8, seed=99))  # data-dependent initialisation (training mode)
    return layer


TRANSFORMS = {
    "additive_coupling_even": lambda: AdditiveCoupling(conditioner(1), parity=0),
    "additive_coupling_odd": lambda: AdditiveCoupling(conditioner(1), parity=1),
    "diagonal_scale": lambda: DiagonalScale(NUM_TYPES),
    "actnorm": initialised_actnorm,
    "slot_channel_mixing": lambda: SlotChannelMixing(NUM_TYPES),
    "glow_coupling": lambda: GlowAffineCoupling(conditioner(2), parity=0),
    "realnvp_coupling": lambda: AffineCoupling(conditioner(2), parity=1, scale_bound=2.0),
    "field_affine": lambda: FieldAffine(NUM_TYPES),
    "sequence": lambda: FlowSequence(
        [initialised_actnorm(), SlotChannelMixing(NUM_TYPES), AdditiveCoupling(conditioner(1), 1),
         GlowAffineCoupling(conditioner(2), 0), DiagonalScale(NUM_TYPES)]
    ),
}


def make_transform(name: str) -> FieldTransform:
    torch.manual_seed(0)
    return randomise(TRANSFORMS[name](), seed=1)


def make_flow(name: str) -> CrystalNICE | CrystalGlow:
    """A whole model with every parameter randomised (and Glow's actnorms initialised on a batch first)."""
    torch.manual_seed(0)
    backbone = functools.partial(CrystalTransformer, d_model=8, n_layers=1, n_heads=2)
    optimizer = functools.partial(torch.optim.Adam, lr=1e-3)
    if name == "nice":
        model = CrystalNICE(backbone, optimizer, NUM_TYPES, MAX_ATOMS, n_couplings=3)
    else:
        model = CrystalGlow(backbone, optimizer, NUM_TYPES, MAX_ATOMS, n_steps=3)
    model.double().train()
    model.to_base(random_fields(8, seed=98))
    return randomise(model, seed=2, scale=0.1)


def jacobian_logdet(fn: Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], Tensor]],
                    fields: dict[str, Tensor]) -> Tensor:
    """``log|det J|`` of ``fn`` (a field map) at each sample, from the dense autograd Jacobian."""
    values = []
    flat = flatten(fields)
    for row in flat:
        jac = torch.autograd.functional.jacobian(lambda v: flatten(fn(unflatten(v[None]))[0])[0], row)
        assert jac.shape == (DIMS, DIMS)
        values.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(values)


# ---------------------------------------------------------------------- every transform, every flow
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_inverts_and_its_logdet_is_the_jacobians(name: str) -> None:
    transform = make_transform(name)
    x = random_fields(3, seed=5)
    y, logdet = transform(x)
    assert logdet.shape == (3,)
    assert not torch.allclose(flatten(y), flatten(x), atol=1e-3), f"{name}: randomised transform is identity"
    back = transform.inverse(y)
    torch.testing.assert_close(flatten(back), flatten(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet, jacobian_logdet(transform, x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["nice", "glow"])
def test_whole_flow_inverts_and_its_logdet_is_the_jacobians(name: str) -> None:
    model = make_flow(name)
    x = random_fields(2, seed=6)
    z, logdet = model.to_base(x)
    torch.testing.assert_close(flatten(model.from_base(z)), flatten(x), atol=1e-11, rtol=0)
    torch.testing.assert_close(logdet, jacobian_logdet(model.to_base, x), atol=1e-9, rtol=0)
    # log_prob is the standard normal density of z plus the log-det
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.log_prob(flatten(z)).sum(dim=1) + logdet
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["nice", "glow"])
def test_flow_density_is_exchangeable_over_slots(name: str) -> None:
    """Parameters shared over slots: permuting the atom slots leaves the log-density unchanged."""
    model = make_flow(name)
    x = random_fields(4, seed=7)
    perm = torch.tensor([2, 0, 1])
    permuted = {k: (v[:, perm] if v.dim() == 3 else v) for k, v in x.items()}
    torch.testing.assert_close(model.log_prob(permuted), model.log_prob(x), atol=1e-10, rtol=0)


# ---------------------------------------------------------------------- NICE
def test_nice_couplings_preserve_volume_and_the_scaling_carries_the_logdet() -> None:
    for parity in (0, 1):
        coupling = make_transform(f"additive_coupling_{'even' if parity == 0 else 'odd'}")
        x = random_fields(4, seed=8)
        y, logdet = coupling(x)
        assert torch.equal(logdet, torch.zeros(4, dtype=torch.float64))
        torch.testing.assert_close(jacobian_logdet(coupling, x), torch.zeros(4, dtype=torch.float64),
                                   atol=1e-12, rtol=0)
        # the kept channels pass unchanged, bit for bit
        for key, value in x.items():
            kept = torch.arange(value.shape[-1]) % 2 == parity
            assert torch.equal(y[key][..., kept], value[..., kept])

    model = make_flow("nice")
    s = model.scaling.log_scale
    expected = MAX_ATOMS * (s["atom_types"].sum() + s["frac_coords"].sum()) + s["lattice"].sum()
    for seed in (9, 10):
        _, logdet = model.to_base(random_fields(3, seed=seed))
        torch.testing.assert_close(logdet, expected.expand(3), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------- Glow
def test_actnorm_initialises_on_the_first_batch_to_zero_mean_unit_variance() -> None:
    g = torch.Generator().manual_seed(11)
    f64 = torch.float64
    first = {  # channels with very different means and spreads
        "atom_types": 4.0 + torch.arange(1.0, NUM_TYPES + 1, dtype=f64)
        * torch.randn(16, MAX_ATOMS, NUM_TYPES, generator=g, dtype=f64),
        "frac_coords": -2.0 + 0.01 * torch.randn(16, MAX_ATOMS, 3, generator=g, dtype=f64),
        "lattice": 3.0 * torch.randn(16, 6, generator=g, dtype=f64) + torch.arange(6.0, dtype=f64),
    }
    layer = ActNorm(NUM_TYPES).double()
    eval_out, _ = layer.eval()(first)  # evaluation mode never initialises: the identity
    assert not bool(layer.initialized) and torch.equal(eval_out["lattice"], first["lattice"])

    y, logdet = layer.train()(first)
    assert bool(layer.initialized)
    std = {k: v.reshape(-1, v.shape[-1]).var(0, correction=0).sqrt() for k, v in first.items()}
    for key, value in y.items():
        flat = value.reshape(-1, value.shape[-1])
        torch.testing.assert_close(flat.mean(0), torch.zeros(flat.shape[1], dtype=f64), atol=1e-12, rtol=0)
        # unit variance up to the eps added to the standard deviation: (std / (std + eps))^2
        torch.testing.assert_close(flat.var(0, correction=0), (std[key] / (std[key] + layer.eps)) ** 2,
                                   atol=1e-12, rtol=0)
        torch.testing.assert_close(flat.var(0, correction=0), torch.ones(flat.shape[1], dtype=f64),
                                   atol=1e-3, rtol=0)
    # log-det: positions times the sum of -log(std + eps) over channels
    logs = {k: torch.log(v + layer.eps).sum() for k, v in std.items()}
    expected = -(MAX_ATOMS * (logs["atom_types"] + logs["frac_coords"]) + logs["lattice"])
    torch.testing.assert_close(logdet, expected.expand(16), atol=1e-10, rtol=0)

    # the second batch uses the stored statistics and does not re-initialise
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    second = {k: v + 10.0 for k, v in first.items()}
    y2, _ = layer(second)
    assert all(torch.equal(p, before[n]) for n, p in layer.named_parameters())
    torch.testing.assert_close(y2["lattice"].mean(0), 10.0 * torch.exp(layer.log_scale["lattice"]).detach(),
                               atol=1e-10, rtol=0)
    # a checkpoint carries the initialisation
    fresh = ActNorm(NUM_TYPES).double()
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)
    torch.testing.assert_close(fresh(second)[0]["lattice"], y2["lattice"])


def test_actnorm_refuses_a_batch_without_variance() -> None:
    with pytest.raises(ValueError, match="at least 2 values per channel of 'lattice'"):
        ActNorm(NUM_TYPES)({k: v[:1].float() for k, v in random_fields(2, seed=0).items()})


def test_lu_linear_logdet_is_slogdet_of_the_assembled_matrix() -> None:
    torch.manual_seed(3)
    layer = LULinear(7)
    weight = layer.weight()
    # initialised as a random rotation: orthogonal, |det| = 1
    torch.testing.assert_close(weight @ weight.T, torch.eye(7), atol=1e-5, rtol=0)
    assert abs(float(layer.log_abs_det().detach())) < 1e-5

    layer = randomise(layer, seed=4)
    permutation, lower, upper = layer.factors()
    assert torch.equal(torch.triu(lower, 1), torch.zeros(7, 7, dtype=torch.float64))
    assert torch.equal(torch.diagonal(lower), torch.ones(7, dtype=torch.float64))
    assert torch.equal(torch.tril(upper, -1), torch.zeros(7, 7, dtype=torch.float64))
    assert torch.equal(permutation @ permutation.T, torch.eye(7, dtype=torch.float64))
    weight = layer.weight().detach()
    sign, logabs = torch.linalg.slogdet(weight)
    torch.testing.assert_close(layer.log_abs_det(), logabs, atol=1e-12, rtol=0)
    assert float(sign) == float(torch.linalg.det(permutation) * layer.sign.prod())
    assert abs(float(logabs)) > 0.1  # the randomised matrix is no longer a rotation
    torch.testing.assert_close(layer.inverse_weight() @ weight, torch.eye(7, dtype=torch.float64),
                               atol=1e-12, rtol=0)

    x = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), torch.einsum("ij,bj->bi", weight, x), atol=1e-12, rtol=0)


def test_slot_channel_mixing_mixes_each_slot_with_one_shared_matrix() -> None:
    mixing = make_transform("slot_channel_mixing")
    x = random_fields(2, seed=12)
    y, logdet = mixing(x)
    w_site, w_lattice = mixing.site.weight(), mixing.lattice.weight()
    for b in range(2):
        for n in range(MAX_ATOMS):
            site = torch.cat([x["atom_types"][b, n], x["frac_coords"][b, n]])
            torch.testing.assert_close(torch.cat([y["atom_types"][b, n], y["frac_coords"][b, n]]),
                                       w_site @ site, atol=1e-12, rtol=0)
        torch.testing.assert_close(y["lattice"][b], w_lattice @ x["lattice"][b], atol=1e-12, rtol=0)
    expected = (MAX_ATOMS * torch.linalg.slogdet(w_site).logabsdet
                + torch.linalg.slogdet(w_lattice).logabsdet)
    torch.testing.assert_close(logdet, expected.expand(2), atol=1e-12, rtol=0)


def test_glow_coupling_scale_is_a_shifted_sigmoid() -> None:
    """With a zero conditioner ``s = sigmoid(2)``, ``t = 0``: the free channels are scaled by sigmoid(2)."""
    coupling = GlowAffineCoupling(conditioner(2), parity=1).double()
    x = random_fields(2, seed=13)
    y, logdet = coupling(x)
    free = {k: torch.arange(v.shape[-1]) % 2 == 0 for k, v in x.items()}
    factor = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    n_free = 0
    for key, value in x.items():
        torch.testing.assert_close(y[key][..., free[key]], factor * value[..., free[key]], atol=1e-14, rtol=0)
        assert torch.equal(y[key][..., ~free[key]], value[..., ~free[key]])
        n_free += value[0][..., free[key]].numel()
    torch.testing.assert_close(logdet, (n_free * torch.log(factor)).expand(2), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------- maximum likelihood on a Gaussian
GAUSS_TYPES, GAUSS_ATOMS = 2, 1  # an 11-dimensional flow variable
GAUSS_DIMS = GAUSS_ATOMS * (GAUSS_TYPES + 3) + 6


@pytest.mark.parametrize("name", ["nice", "glow"])
def test_trained_flow_reaches_the_entropy_of_a_gaussian(name: str) -> None:
    """Fit ``N(mu, Sigma)`` (random dense covariance, 11 dims) for 250 Adam steps; the held-out NLL must lie
    within a small margin above the closed-form entropy ``log det(2 pi e Sigma) / 2``.

    The expected held-out NLL of any density is the entropy plus a KL >= 0, so the lower margin is only the
    Monte-Carlo error of 4,096 test points (standard error about 0.04 nats); a wrong log-det or an
    unnormalised density would fall below it. The upper margin (0.6 nats in total, 0.055 per dimension)
    leaves room over what these tiny flows reach in 250 steps (here 0.22 for NICE and 0.19 for Glow; 0.15 to
    0.33 over other seeds and batch sizes); the untrained flows sit 20 to 32 nats above the entropy.
    """
    g = torch.Generator().manual_seed(0)
    factor = torch.randn(GAUSS_DIMS, GAUSS_DIMS, generator=g) / math.sqrt(GAUSS_DIMS)
    cov = factor @ factor.T + 0.1 * torch.eye(GAUSS_DIMS)
    mean = 2.0 * torch.randn(GAUSS_DIMS, generator=g)
    chol = torch.linalg.cholesky(cov)
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))

    def draw(n: int, gen: torch.Generator) -> dict[str, Tensor]:
        return unflatten(mean + torch.randn(n, GAUSS_DIMS, generator=gen) @ chol.T, GAUSS_TYPES, GAUSS_ATOMS)

    test = draw(4096, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    backbone = functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2)
    optimizer = functools.partial(torch.optim.Adam, lr=1e-2)
    if name == "nice":
        model = CrystalNICE(backbone, optimizer, GAUSS_TYPES, GAUSS_ATOMS, n_couplings=4)
    else:
        model = CrystalGlow(backbone, optimizer, GAUSS_TYPES, GAUSS_ATOMS, n_steps=4)
    opt = model.build_optimizer(model.parameters())

    def held_out_nll() -> float:
        model.eval()
        with torch.no_grad():
            value = -float(model.log_prob(test).mean())
        model.train()
        return value

    untrained = held_out_nll()
    gen = torch.Generator().manual_seed(2)
    for _ in range(250):
        loss = -model.log_prob(draw(256, gen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = held_out_nll()
    assert untrained - entropy > 15.0
    assert entropy - 0.15 < trained < entropy + 0.6, f"{name}: NLL {trained:.3f}, entropy {entropy:.3f}"


# ---------------------------------------------------------------------- realnvp on the shared machinery
def test_realnvp_keeps_its_parameter_names() -> None:
    """On the shared transforms realnvp keeps its checkpoint keys (``affine.*``, ``couplings.*``)."""
    backbone = functools.partial(CrystalTransformer, d_model=8, n_layers=1, n_heads=2)
    model = CrystalRealNVP(backbone, functools.partial(torch.optim.Adam), NUM_TYPES, MAX_ATOMS, n_couplings=2)
    prefixes = {name.split(".")[0] for name in model.state_dict()}
    assert prefixes == {"affine", "couplings"}
    names = [type(t).__name__ for t in model.transforms()]
    assert names == ["FieldAffine", "AffineCoupling", "AffineCoupling"]
