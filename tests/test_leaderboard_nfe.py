"""Quality versus NFE on the board: which rows form a curve, that the plotted numbers are the board's own, and
when the figure (HTML) and its table (Markdown) appear."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import t as student_t

from bench.leaderboard import build
from bench.leaderboard.aggregate import aggregate
from bench.leaderboard.nfe import missing_sentence, nfe_curves, shows_nfe
from bench.leaderboard.sampling import sampling_of
from bench.records import ResultRecord, write_record

PROTOCOL = {"id": "perov_5_offline__train-val_eval-test_n100", "train": "val", "eval": "test",
            "official": False, "label": "train=val,eval=test", "num_samples": 100}
ANCESTRAL = {"_target_": "bench.models.diffusion.samplers.AncestralSampler", "steps": 100,
             "variance": "posterior", "clip_denoised": True}
OWN = "ddpm-eps-cosine"


def _ddim(steps: int, eta: float = 0.0) -> dict[str, Any]:
    return {"_target_": "bench.models.diffusion.samplers.DDIMSampler", "steps": steps, "eta": eta,
            "clip_denoised": True}


def _record(variant: str, seed: int, nfe: float | None, sampler: dict[str, Any] | None, valid: float,
            rate: float, *, model: str = "ddpm", family: str = "diffusion", own: str = OWN,
            kind: str = "run", config: dict[str, Any] | None = None) -> ResultRecord:
    """A run of ``variant`` (``own`` is its config's ``model.variant``) sampled by ``sampler`` at ``nfe``; the
    COV metrics and vun_rate are fixed offsets of ``valid`` so each panel has its own known values."""
    entry = {"direction": "max", "description": "test metric", "version": "1"}
    metrics = {name: {"value": round(valid - offset, 6), **entry}
               for name, offset in (("valid", 0.0), ("cov_recall", 0.1), ("cov_precision", 0.2),
                                    ("vun_rate", 0.3))}
    module = {"_target_": "bench.models.x.X"} | ({"sampler": sampler} if sampler is not None else {})
    return ResultRecord(
        model=model, family=family, variant=variant, dataset="perov_5", split_protocol=PROTOCOL["label"],
        split=dict(PROTOCOL), seed=seed, kind=kind, metrics=metrics,
        config={"model": {"name": model, "variant": own, "module": module}} if config is None else config,
        config_hash=hashlib.sha256(f"{variant}/{seed}".encode()).hexdigest()[:16],
        cost={"train_seconds": 100.0, "sample_nfe": nfe, "samples_per_second": rate, "sample_seconds": 1.0},
    )


# per-seed valid and samples/s of the DDIM curve: hand-picked so the means and t intervals are known
DDIM_VALID = {50: (0.70, 0.75, 0.80), 100: (0.80, 0.85, 0.90), 200: (0.90, 0.92, 0.94)}
DDIM_RATE = {50: (100.0, 110.0, 120.0), 100: (50.0, 55.0, 60.0), 200: (20.0, 25.0, 30.0)}


def nfe_records(*, ddim: tuple[int, ...] = (50, 100, 200), nfe_known: bool = True) -> list[ResultRecord]:
    """One DDPM trained as ``ddpm-eps-cosine`` sampled by its own ancestral sampler (NFE 100), by DDIM at each
    of ``ddim`` steps and by DDIM with eta 0.5 (another family); a DDPM trained with an override
    (``+scheduler=cosine``: another trained model) by its own sampler and by DDIM-50; a VAE (no sampler)."""
    def known(n: float) -> float | None:
        return n if nfe_known else None

    out = []
    for seed in range(3):
        out.append(_record(OWN, seed, known(100), ANCESTRAL, 0.95, 10.0))
        for steps in ddim:
            out.append(_record(f"{OWN}+ddim-{steps}", seed, known(steps), _ddim(steps),
                               DDIM_VALID[steps][seed], DDIM_RATE[steps][seed]))
        if ddim:
            out.append(_record(f"{OWN}+ddim-50-eta0.5", seed, known(50), _ddim(50, 0.5), 0.6, 100.0))
        out.append(_record(f"{OWN}+scheduler=cosine", seed, known(100), ANCESTRAL, 0.93, 10.0))
        if ddim:
            out.append(_record(f"{OWN}+scheduler=cosine+ddim-50", seed, known(50), _ddim(50), 0.7, 100.0))
        out.append(_record("vae-gaussian", seed, known(1), None, 0.9, 3000.0, model="vae", family="vae",
                           own="vae-gaussian"))
    return out


def write_nfe_results(root: Path, **kw: Any) -> Path:
    """Write :func:`nfe_records` as a results directory; return it."""
    for record in nfe_records(**kw):
        write_record(record, root)
    return root


def _t_interval(values: tuple[float, ...]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval, by the textbook formula."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


# ------------------------------------------------------------------------------------------- sampler tags


def test_sampler_tag_is_told_apart_from_an_override_tag() -> None:
    cases = {
        OWN: (OWN, "ancestral"),
        f"{OWN}+ddim-50": (OWN, "ddim"),
        f"{OWN}+ddim-50-eta0.5": (OWN, "ddim-eta0.5"),
        f"{OWN}+scheduler=cosine": (f"{OWN}+scheduler=cosine", "ancestral"),
        f"{OWN}+scheduler=cosine+ddim-50": (f"{OWN}+scheduler=cosine", "ddim"),
        f"{OWN}+ddim-50+heat_ref=1,2": (f"{OWN}+heat_ref=1,2", "ddim"),  # a condition tag stays
    }
    samplers = {OWN: ANCESTRAL, f"{OWN}+scheduler=cosine": ANCESTRAL, f"{OWN}+ddim-50-eta0.5": _ddim(50, 0.5)}
    for variant, (trained, label) in cases.items():
        s = sampling_of(_record(variant, 0, 50, samplers.get(variant, _ddim(50)), 0.9, 1.0))
        assert (s.trained_variant, s.label) == (trained, label), variant
    # the family is the class and every setting but the step count
    key = sampling_of(_record(f"{OWN}+ddim-50", 0, 50, _ddim(50), 0.9, 1.0)).sampler
    assert sampling_of(_record(f"{OWN}+ddim-100", 0, 100, _ddim(100), 0.9, 1.0)).sampler == key
    assert sampling_of(_record(f"{OWN}+ddim-50-eta0.5", 0, 50, _ddim(50, 0.5), 0.9, 1.0)).sampler != key
    # an override key that starts like the sampler's name is not its tag
    s = sampling_of(_record(f"{OWN}+ddim=3", 0, 50, _ddim(50), 0.9, 1.0))
    assert s.trained_variant == f"{OWN}+ddim=3"
    # no sampler in the config (a one-shot model, an old hand-made record) or not a run: the variant is whole
    assert sampling_of(_record("x+ddim-50", 0, 50, None, 0.9, 1.0, own="x")).trained_variant == "x+ddim-50"
    assert sampling_of(_record("x+ddim-50", 0, 50, None, 0.9, 1.0, config={})).sampler is None
    ext = sampling_of(_record("x+ddim-50", 0, 50, _ddim(50), 0.9, 1.0, kind="external"))
    assert (ext.trained_variant, ext.sampler) == ("x+ddim-50", None)


def test_variants_formed_by_the_real_stages_split_back_into_model_and_sampler() -> None:
    """The variant as the sample stage tags it (:func:`bench.rundirs.sampler_override`) and the evaluate
    stage inserts the override tag (:func:`bench.rundirs.record_variant`), from the composed config."""
    from bench.config import compose, record_config
    from bench.rundirs import record_variant, sampler_override

    base = ["model=ddpm", "experiment=perov_5_offline", "seed=0", "model.module.timesteps=500"]
    trained = compose(base)
    sampled = compose([*base, "sampler@model.module.sampler=ddim", "model.module.sampler.steps=50"])
    tag = sampler_override(sampled.model, trained.model)
    variants = {
        "own": (trained, record_variant(trained, str(trained.model.variant))),
        "ddim": (sampled, record_variant(sampled, f"{sampled.model.variant}+{tag}")),
    }
    assert variants["ddim"][1] == "ddpm-eps-cosine+timesteps=500+ddim-50"
    for label, (cfg, variant) in variants.items():
        record = ResultRecord(model="ddpm", family="diffusion", variant=variant, dataset="perov_5",
                              split_protocol="p", seed=0, config=record_config(cfg))
        s = sampling_of(record)
        assert s.trained_variant == "ddpm-eps-cosine+timesteps=500", label
        assert s.label == ("ancestral" if label == "own" else "ddim")


# --------------------------------------------------------------------------------------------------- groups


def test_rows_are_grouped_by_trained_variant_and_sampler_family() -> None:
    curves = nfe_curves(aggregate(nfe_records()))
    groups = {c.label: [r.variant for r in c.rows] for c in curves}
    assert groups == {
        f"{OWN} · ancestral": [OWN],
        f"{OWN} · ddim": [f"{OWN}+ddim-50", f"{OWN}+ddim-100", f"{OWN}+ddim-200"],
        f"{OWN} · ddim-eta0.5": [f"{OWN}+ddim-50-eta0.5"],
        f"{OWN}+scheduler=cosine · ancestral": [f"{OWN}+scheduler=cosine"],
        f"{OWN}+scheduler=cosine · ddim": [f"{OWN}+scheduler=cosine+ddim-50"],
        "vae-gaussian": ["vae-gaussian"],
    }
    by_label = {c.label: c for c in curves}
    assert by_label[f"{OWN} · ddim"].nfes == [50.0, 100.0, 200.0]
    assert [c.label for c in curves if c.is_curve] == [f"{OWN} · ddim"]  # the others are points
    assert shows_nfe(curves)


def test_the_figure_needs_one_model_at_two_nfe_values() -> None:
    one_each = aggregate(nfe_records(ddim=()))  # every trained model at one NFE
    assert not shows_nfe(nfe_curves(one_each))
    sentence = missing_sentence(one_each)
    assert sentence and f"`{OWN}`" in sentence and f"`{OWN}+ancestral-<steps>`" in sentence
    # two samplers of one model, but records without the NFE: the sentence names both rows
    unknown = aggregate(nfe_records(ddim=(50,), nfe_known=False))
    assert nfe_curves(unknown) == []
    sentence = missing_sentence(unknown)
    assert sentence and f"`{OWN}+ddim-50`" in sentence and "cost.sample_nfe" in sentence
    # one NFE each, but one model sampled by two samplers at two NFE: shown
    assert shows_nfe(nfe_curves(aggregate(nfe_records(ddim=(50,)))))


# ------------------------------------------------------------------------------------ what the board shows


def _points(html: str, metric: str, label: str) -> list[dict[str, float]]:
    """The ``data-*`` numbers of each point of the curve ``label`` in the panel of ``metric``."""
    panel = re.search(rf'<svg class="plot nfe-panel"[^>]*data-metric="{metric}">(.*?)</svg>', html, re.S)
    assert panel, metric
    curve = next(c for c in re.findall(r'<g class="nfe-curve".*?</text></g>', panel.group(1), re.S)
                 if f">{label}</text></g>" in c)
    points = []
    for attrs in re.findall(r'<g class="nfe-point" ([^>]*)>', curve):
        values = dict(re.findall(r'data-(\w+)="([^"]*)"', attrs))
        points.append({k: float(v) for k, v in values.items()})
    cxs = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', curve)
    for point, (cx, cy) in zip(points, cxs, strict=True):
        point["cx"], point["cy"] = float(cx), float(cy)
    return points


def test_plotted_means_and_intervals_are_the_boards_own(tmp_path: Path) -> None:
    results = write_nfe_results(tmp_path / "results")
    paths = build(results, tmp_path / "board")
    html, markdown = paths["html"].read_text(), paths["markdown"].read_text()
    rows = {r.variant: r for r in aggregate(nfe_records())}
    label = f"{OWN} · ddim"
    for metric, offset in (("valid", 0.0), ("cov_recall", 0.1), ("cov_precision", 0.2), ("vun_rate", 0.3)):
        points = _points(html, metric, label)
        assert [p["nfe"] for p in points] == [50.0, 100.0, 200.0]
        for point, steps in zip(points, (50, 100, 200), strict=True):
            board = rows[f"{OWN}+ddim-{steps}"].metrics[metric]
            assert (point["mean"], point["low"], point["high"]) == (board.mean, *board.ci)
            mean, low, high = _t_interval(tuple(round(v - offset, 6) for v in DDIM_VALID[steps]))
            assert point["mean"] == pytest.approx(mean) and point["low"] == pytest.approx(max(low, 0.0))
            assert point["high"] == pytest.approx(min(high, 1.0))
        assert points[0]["cy"] > points[1]["cy"] > points[2]["cy"]  # higher means are drawn higher
        # log x: 50 -> 100 and 100 -> 200 are the same distance
        assert points[1]["cx"] - points[0]["cx"] == pytest.approx(points[2]["cx"] - points[1]["cx"], abs=0.15)
    rates = _points(html, "samples_per_second", label)
    for point, steps in zip(rates, (50, 100, 200), strict=True):
        board = rows[f"{OWN}+ddim-{steps}"]
        summary = board.cost_summaries["samples_per_second"]
        assert point["mean"] == board.cost["samples_per_second"] == summary.mean
        assert (point["low"], point["high"]) == summary.ci
        mean, low, high = _t_interval(DDIM_RATE[steps])
        assert (point["mean"], point["low"], point["high"]) == pytest.approx((mean, low, high))
    assert rates[0]["cy"] < rates[1]["cy"] < rates[2]["cy"]  # fewer steps, more samples per second
    # the Markdown table has the same numbers: DDIM-50's valid 0.750 [0.626, 0.874], 110 [85.2, 135] samples/s
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {label} | {OWN}+ddim-50 |"))
    mean, low, high = _t_interval(DDIM_VALID[50])
    assert f"| 50 | 3 | {mean:.3f} [{low:.3f}, {high:.3f}] |" in line
    assert line.endswith("| 110 [85.2, 135] |")


def test_figure_and_table_appear_only_with_two_nfe_values(tmp_path: Path) -> None:
    one = build(write_nfe_results(tmp_path / "one", ddim=()), tmp_path / "b1")
    html, markdown = one["html"].read_text(), one["markdown"].read_text()
    assert '<figure class="nfe"' not in html and "nfe-panel" not in html
    assert 'class="note nfe-none"' in html and "No quality-versus-NFE figure" in html
    assert "| model · sampler |" not in markdown and "No quality-versus-NFE figure" in markdown
    two = build(write_nfe_results(tmp_path / "two"), tmp_path / "b2")
    html, markdown = two["html"].read_text(), two["markdown"].read_text()
    assert html.count('<figure class="nfe"') == 1 and html.count('<svg class="plot nfe-panel"') == 5
    assert 'class="note nfe-none"' not in html
    for curve in (f"{OWN} · ddim", f"{OWN} · ancestral", f"{OWN}+scheduler=cosine · ddim", "vae-gaussian"):
        labels = re.findall(rf'<text class="curve-label"[^>]*>{re.escape(curve)}</text>', html)
        assert len(labels) == 5, curve  # labelled in every panel
    assert '<a href="#nfe-perov_5-0">Quality versus NFE</a>' in html  # linked from the first screen
    assert "### perov_5: quality versus NFE" in markdown and "| model · sampler |" in markdown
    assert markdown.count(f"| {OWN} · ddim |") == 3
