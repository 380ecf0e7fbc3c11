"""``vlae`` (Chen et al. 2017) on inputs with an independently known answer.

- the decoder's receptive field is exactly ``W`` tokens: the logits of token ``i`` do not move when a token
  outside ``[i - W, i)`` changes, and do move for each token inside; its key/value cache reproduces the full
  banded pass (sampling's path), and ``W`` at least the context is the full causal decoder;
- the autoregressive-flow prior's log-density equals ``log N(f(z)) + log|det J_f(z)|`` with the Jacobian of
  its forward map taken by autograd, it inverts exactly, and its density integrates to 1 on a grid in 1-D and
  2-D;
- the KL estimate averages to the closed-form KL between Gaussians when the flow is an affine map of known
  mean and scale; with no flow transform the loss is, draw for draw, the VAE's with a ``N(0, I)`` prior, and
  its KL averages to the closed form;
- the importance-weighted ``nll_test`` equals the exact token NLL when ``z`` carries nothing (decoder blind to
  ``z``, posterior equal to the prior), and is no higher than the negative ELBO otherwise;
- the tokens the representation wrote are read back as the crystal they spell (the encoder's input), and
  sampling is a function of the generator's seed, on both the token and the codec outputs.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from bench.datasets.tiny import tiny_structures
from bench.datasets.tokens import CrystalTokens
from bench.models.autoregressive.gpt import GPTDecoder, layer_windows
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.backbone import CrystalTransformer
from bench.models.vae.flow_prior import AutoregressiveFlowPrior, FlowPriorLatent, gaussian_entropy
from bench.models.vae.vlae import CrystalVLAE, token_fields

from bench.config import compose

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, LENGTH = 13, 24


@pytest.fixture(scope="module")
def tiny_rep() -> CrystalTokens:
    return CrystalTokens(max_atoms=8).fit(tiny_structures("train"))


@pytest.fixture(scope="module")
def tiny_tokens(tiny_rep: CrystalTokens) -> torch.Tensor:
    return tiny_rep.encode(tiny_structures("train"))["tokens"]


def _vlae(
    rep: CrystalTokens, window: int | None = 4, layers: int = 2, dim: int = 3, seed: int = 0, **kw: object
) -> CrystalVLAE:
    torch.manual_seed(seed)
    return CrystalVLAE(
        backbone=functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        sampler=TokenSampler(),
        latent=FlowPriorLatent(dim, layers=layers, hidden_dim=16),
        window=window, d_model=32, n_layers=2, n_heads=2, dropout=0.0, **{**rep.sizes(), **kw},
    )


def _randomise_outputs(flow: AutoregressiveFlowPrior, std: float, seed: int) -> None:
    """Give the (zero-initialised) MADE output layers random weights, so the flow is no identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for step in flow.steps:
            out = step.made.out
            out.weight.copy_(torch.randn(out.weight.shape, generator=g) * std)
            out.bias.copy_(torch.randn(out.bias.shape, generator=g) * std)


def _loud(net: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Redraw every weight at ``std`` (GPT's 0.02 makes a dependency three layers deep ~1e-5, hard to tell
    from nothing)."""
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    return net


# --- the decoder --------------------------------------------------------------------------------------------


def test_layer_windows_stack_to_exactly_the_receptive_field() -> None:
    for window in range(1, 12):
        for n_layers in range(1, 5):
            widths = layer_windows(window, n_layers)
            assert len(widths) == n_layers and min(widths) >= 1
            assert 1 + sum(w - 1 for w in widths) == window
    assert layer_windows(None, 3) == [None, None, None]


@pytest.mark.parametrize(("window", "n_layers"), [(1, 2), (4, 3), (6, 2), (9, 4)])
def test_the_decoder_reads_exactly_the_last_w_tokens(window: int, n_layers: int) -> None:
    """Logits at input position ``j`` predict token ``i = j + 1``; they must read tokens ``i - W .. i - 1``
    (input positions ``j - W + 1 .. j``) and nothing earlier, whatever the layers' split of ``W``."""
    torch.manual_seed(0)
    net = _loud(GPTDecoder(VOCAB, LENGTH, d_model=32, n_layers=n_layers, n_heads=2, dropout=0.0,
                           window=window, cond_dim=3)).eval()
    tokens = torch.randint(0, VOCAB, (2, LENGTH))
    z = torch.randn(2, 3)
    with torch.no_grad():
        base, _ = net(tokens, cond=z)
        for k in range(LENGTH):
            changed = tokens.clone()
            changed[:, k] = (tokens[:, k] + 1 + torch.arange(2)) % VOCAB
            moved = (net(changed, cond=z)[0] - base).abs().amax(dim=(0, 2))  # [positions]
            for j in range(LENGTH):
                if j - window < k <= j:
                    assert moved[j] > 1e-4, f"W={window}: logits at {j} ignore the token at {k}"
                else:
                    assert moved[j] == 0.0, f"W={window}: logits at {j} read the token at {k}"
        # z is read at every position
        other = (net(tokens, cond=z + 1.0)[0] - base).abs().amax(dim=(0, 2))
        assert bool((other > 1e-4).all())


def test_the_banded_cache_reproduces_the_full_pass_and_a_wide_band_is_the_causal_decoder() -> None:
    torch.manual_seed(1)
    net = GPTDecoder(VOCAB, LENGTH, d_model=32, n_layers=3, n_heads=4, dropout=0.0, window=5,
                     cond_dim=2).eval()
    tokens = torch.randint(0, VOCAB, (3, LENGTH))
    z = torch.randn(3, 2)
    with torch.no_grad():
        full, _ = net(tokens, cond=z)
        logits, cache = net(tokens[:, :1], cond=z)
        steps = [logits]
        for t in range(1, LENGTH):
            logits, cache = net(tokens[:, t:t + 1], cache, cond=z)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)

        torch.manual_seed(2)
        causal = GPTDecoder(VOCAB, LENGTH, d_model=32, n_layers=2, n_heads=2, dropout=0.0).eval()
        wide = GPTDecoder(VOCAB, LENGTH, d_model=32, n_layers=2, n_heads=2, dropout=0.0, window=LENGTH).eval()
        wide.load_state_dict(causal.state_dict())
        torch.testing.assert_close(wide(tokens)[0], causal(tokens)[0], rtol=1e-5, atol=1e-6)


# --- the flow prior -----------------------------------------------------------------------------------------


def test_flow_log_density_is_the_change_of_variables_by_autograd_and_inverts() -> None:
    torch.manual_seed(0)
    flow = AutoregressiveFlowPrior(dim=4, layers=3, hidden_dim=24, scale_bound=2.0).double()
    _randomise_outputs(flow, std=0.4, seed=1)
    z = torch.randn(6, 4, dtype=torch.float64) * 1.5
    for row in z:
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0].squeeze(0), row)
        eps = flow(row.unsqueeze(0))[0].squeeze(0)
        by_hand = -0.5 * (eps.pow(2).sum() + 4 * math.log(2 * math.pi)) + torch.linalg.slogdet(jacobian)[1]
        torch.testing.assert_close(flow.log_prob(row.unsqueeze(0)).squeeze(0), by_hand, rtol=1e-10,
                                   atol=1e-10)
    # one transform alone is autoregressive: its Jacobian is lower-triangular
    step = flow.steps[1]
    jacobian = torch.autograd.functional.jacobian(lambda v: step(v)[0], z[0])
    assert torch.count_nonzero(torch.triu(jacobian, 1)) == 0
    assert torch.count_nonzero(torch.diagonal(jacobian)) == 4
    torch.testing.assert_close(flow.inverse(flow(z)[0]), z, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 2])
def test_flow_density_integrates_to_one(dim: int) -> None:
    torch.manual_seed(3)
    flow = AutoregressiveFlowPrior(dim=dim, layers=3, hidden_dim=16, scale_bound=1.0).double()
    _randomise_outputs(flow, std=0.3, seed=4)
    half, step = 14.0, (0.005 if dim == 1 else 0.03)
    axis = torch.arange(-half, half + step / 2, step, dtype=torch.float64)
    grid = torch.cartesian_prod(*([axis] * dim)).reshape(-1, dim)
    with torch.no_grad():
        mass = torch.exp(flow.log_prob(grid)).sum() * step**dim
        # a non-trivial density: not the base normal
        base = -0.5 * grid.pow(2).sum(-1) - 0.5 * dim * math.log(2 * math.pi)
        assert (flow.log_prob(grid) - base).abs().max() > 0.1
    assert abs(float(mass) - 1.0) < 2e-3, float(mass)


def test_kl_estimate_averages_to_the_closed_form_against_an_affine_flow_prior() -> None:
    """One transform with a blind MADE (zero weights, bias = (m, a)): the prior is ``N(m, diag(e^{2a}))``."""
    dim = 3
    latent = FlowPriorLatent(dim, layers=1, hidden_dim=8, scale_bound=3.0).double()
    m = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    a = torch.tensor([0.3, -0.4, 0.8], dtype=torch.float64)
    made = latent.flow.steps[0].made
    with torch.no_grad():
        made.out.weight.zero_()
        made.out.bias.copy_(torch.cat([m, 3.0 * torch.atanh(a / 3.0)]))  # s = 3 tanh(raw / 3) = a
    mu = torch.tensor([[0.1, -0.7, 1.5], [1.0, 0.0, -0.5]], dtype=torch.float64)
    logvar = torch.tensor([[-0.5, 0.2, -1.0], [0.0, 0.4, 0.1]], dtype=torch.float64)
    prior_var = torch.exp(2 * a)
    closed = 0.5 * (torch.log(prior_var) - logvar + (logvar.exp() + (mu - m).pow(2)) / prior_var - 1).sum(-1)

    g = torch.Generator().manual_seed(0)
    draws = 200_000
    eps = torch.randn((draws, *mu.shape), generator=g, dtype=torch.float64)
    z = mu + eps * torch.exp(0.5 * logvar)
    with torch.no_grad():
        estimates = latent.kl_estimate(mu.expand_as(z), logvar.expand_as(z), z)  # [draws, 2]
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(draws)
    assert torch.all((mean - closed).abs() < 4 * se + 1e-9), (mean, closed, se)
    # the entropy term is the closed form; the log-prior is the Gaussian's exactly
    with torch.no_grad():
        log_prior = latent.log_prior(z[:5, 0])
    by_hand = (-0.5 * ((z[:5, 0] - m).pow(2) / prior_var + torch.log(2 * math.pi * prior_var))).sum(-1)
    torch.testing.assert_close(log_prior, by_hand, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gaussian_entropy(logvar),
                               0.5 * (1 + math.log(2 * math.pi) + logvar).sum(-1))


# --- the model ----------------------------------------------------------------------------------------------


def test_with_no_flow_the_loss_is_the_vae_with_a_standard_normal_prior(
    tiny_rep: CrystalTokens, tiny_tokens: torch.Tensor
) -> None:
    model = _vlae(tiny_rep, layers=0, dim=3).eval()
    batch = {"tokens": tiny_tokens}
    torch.manual_seed(11)
    terms = model.loss(batch)
    # the same draw by hand: z = mu + sigma eps with eps from the same seed
    with torch.no_grad():
        mu, logvar = model.posterior_params(batch).chunk(2, dim=-1)
        logvar = logvar.clamp(-10, 10)
        torch.manual_seed(11)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits, _ = model.net(tiny_tokens[:, :-1], cond=z)
        logp = torch.log_softmax(logits, -1).gather(-1, tiny_tokens[:, 1:, None]).squeeze(-1)
        recon = -(logp * (tiny_tokens[:, 1:] != 0)).sum(1)
        log_q = (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp())).sum(-1)
        log_n01 = (-0.5 * (math.log(2 * math.pi) + z.pow(2))).sum(-1)
        entropy_gap = -gaussian_entropy(logvar) - log_q  # zero mean over the draw; not per draw
    kl_one_draw = (-gaussian_entropy(logvar) - log_n01).mean()
    torch.testing.assert_close(terms["recon_nll"], recon.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["kl"], kl_one_draw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["loss"], recon.mean() + kl_one_draw, rtol=1e-5, atol=1e-5)
    assert entropy_gap.abs().max() > 0  # the estimator uses the entropy, not log q at the draw

    # averaged over draws, the KL is the closed form KL(q || N(0, I)) of the plain VAE
    closed = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)).mean()
    torch.manual_seed(12)
    with torch.no_grad():
        kls = torch.stack([model.latent.penalty(
            {"mu": mu, "logvar": logvar}, mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), 0
        ).regulariser for _ in range(4000)])
    assert abs(float(kls.mean() - closed)) < 4 * float(kls.std()) / math.sqrt(4000) + 1e-6


def test_nll_is_the_exact_token_nll_when_z_carries_nothing_and_a_bound_otherwise(
    tiny_rep: CrystalTokens, tiny_tokens: torch.Tensor
) -> None:
    model = _vlae(tiny_rep, layers=0, dim=3, seed=5).eval()
    batch = {"tokens": tiny_tokens}
    with torch.no_grad():
        model.net.cond_proj.weight.zero_()  # the decoder is blind to z ...
        model.encoder.pooled_out.weight.zero_()  # ... and q(z|x) = N(0, I) = p(z)
        model.encoder.pooled_out.bias.zero_()
        exact = model.token_nll(tiny_tokens, torch.zeros(len(tiny_tokens), 3)).double()
    for draws in (1, 5):
        nll = model.test_nll(batch, draws, torch.Generator().manual_seed(draws))
        torch.testing.assert_close(nll, exact, rtol=1e-6, atol=1e-5)

    trained = _vlae(tiny_rep, layers=2, dim=3, seed=6).eval()
    _randomise_outputs(trained.latent.flow, std=0.3, seed=7)
    weights = trained.log_importance_weights(batch, 64, torch.Generator().manual_seed(0))  # [64, B]
    neg_elbo = -weights.mean(0)
    iwae = trained.test_nll(batch, 64, torch.Generator().manual_seed(0))
    assert torch.all(iwae <= neg_elbo + 1e-9) and torch.all(iwae > 0)


def test_tokens_are_read_back_as_the_crystal_they_spell(
    tiny_rep: CrystalTokens, tiny_tokens: torch.Tensor
) -> None:
    fields = token_fields(tiny_rep.tokenizer, tiny_tokens)
    again = tiny_rep.tokenizer.encode(fields["atom_types"], fields["frac_coords"], fields["lattice"])
    assert torch.equal(again, tiny_tokens)
    parsed = tiny_rep.tokenizer.parse(tiny_tokens)
    assert torch.equal(fields["atom_types"].argmax(-1), torch.as_tensor(parsed.classes))
    torch.testing.assert_close(fields["frac_coords"].double(), torch.as_tensor(parsed.frac_coords))
    torch.testing.assert_close(fields["lattice"].double(), torch.as_tensor(parsed.lattice), rtol=0,
                               atol=1e-5)


def test_samples_follow_the_seed_and_z_is_drawn_from_the_flow_prior(tiny_rep: CrystalTokens) -> None:
    model = _vlae(tiny_rep, layers=2, dim=3, seed=8)  # output="tokens", from the representation
    _randomise_outputs(model.latent.flow, std=0.3, seed=9)
    first = model.sample(5, generator=torch.Generator().manual_seed(1))["tokens"]
    again = model.sample(5, generator=torch.Generator().manual_seed(1))["tokens"]
    assert torch.equal(first, again) and first.shape == (5, tiny_rep.tokenizer.length)
    g = torch.Generator().manual_seed(1)
    z = model.generation_condition(5, g)
    expected = model.latent.flow.inverse(torch.randn((5, 3), generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(z, expected)
    parsed = tiny_rep.decode({"tokens": first})
    assert len(parsed) == 5


def test_the_config_builds_the_model_on_the_token_representation() -> None:
    cfg = compose(["model=vlae"])
    assert cfg.representation._target_ == "bench.datasets.tokens.CrystalTokens"
    assert cfg.model.family == "vae" and cfg.model.module.window == 4
    assert cfg.model.module.latent._target_.endswith("FlowPriorLatent")
    assert compose(["model=vlae", "model.module.window=null"]).model.module.window is None


def test_free_nats_flatten_the_regulariser_below_the_threshold_only() -> None:
    torch.manual_seed(0)
    latent = FlowPriorLatent(2, layers=1, hidden_dim=8, free_nats=3.0)
    z = torch.zeros(4, 2)
    for shift, below in ((0.1, True), (4.0, False)):
        mu = torch.full((4, 2), shift, requires_grad=True)
        logvar = torch.zeros(4, 2)
        out = latent.penalty({"mu": mu, "logvar": logvar}, z + mu, 0)
        kl = latent.kl_estimate(mu, logvar, z + mu).mean().detach()
        torch.testing.assert_close(out.terms["kl"], kl)  # the logged KL is the true estimate
        (grad,) = torch.autograd.grad(out.regulariser, mu)
        regulariser = out.regulariser.detach()
        if below:
            assert float(kl) < 3.0 and float(regulariser) == 3.0 and torch.count_nonzero(grad) == 0
        else:
            assert float(kl) > 3.0 and torch.equal(regulariser, kl) and torch.count_nonzero(grad) > 0
    with pytest.raises(ValueError, match="free_nats"):
        FlowPriorLatent(2, free_nats=-1.0)


def test_the_family_latent_reading_gets_the_posterior_mean(
    tiny_rep: CrystalTokens, tiny_tokens: torch.Tensor
) -> None:
    from bench.disentangle import latent_codes

    model = _vlae(tiny_rep, seed=10).eval()
    codes = latent_codes(model, {"tokens": tiny_tokens})
    with torch.no_grad():
        mu = model.encode_tokens(tiny_tokens).chunk(2, dim=-1)[0]
    torch.testing.assert_close(torch.as_tensor(codes.continuous), mu.double())
