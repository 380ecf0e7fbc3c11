"""Generative models of tables (the tabular augmentation track, ``docs/tabular_track.md``).

Each model learns the distribution of a table's rows in CTGAN's mode-specific normalisation
(:class:`bench.datasets.tabular_representation.ModeSpecificNormalizer`: per continuous column a scalar and the
one-hot of its mode, ``rows`` ``[B, D]``), is built with the representation's ``modes`` (the kept modes of
each column) and samples rows in the same layout. Its config says ``track: tabular``, so the tabular stage
fits it once per training fold and scores its rows (:mod:`bench.tabular_stages`).
:mod:`bench.models.tabular.base` holds what the models share.
"""
