"""Generative models of chemical compositions (the composition track, ``docs/composition_track.md``).

Each model learns the distribution of formulas in the count-matrix representation
(:class:`bench.datasets.composition_representation.CompositionCounts`: per element of the training vocabulary
a count level 0..8, one-hot over the last axis of ``counts`` ``[B, E, L]``), is built with the
representation's sizes ``num_elements`` and ``num_levels``, and samples a batch in the same layout. Its config
says ``track: composition``, so the harness trains it on a composition dataset and scores its formulas with
the composition metrics. :mod:`bench.models.composition.counts` holds what the models share;
:mod:`bench.models.composition.marginal` (``comp_marginal``) is the baseline every one of them must beat.
"""
