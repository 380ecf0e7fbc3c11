"""Explicit registry of the benchmark datasets: pinned upstream files, checksums, properties and citations.

Every crystal dataset is a set of CSV files (``<split>.csv`` with ``material_id`` and ``cif`` columns)
published in a public repository. Files are pinned to one upstream commit and identified by their git blob id
(what ``git hash-object FILE`` prints), plus their sha256 where it is known. The ``tiny`` dataset is built by
the project itself (see :mod:`bench.datasets.tiny`) and has no file.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "UnknownDatasetError",
    "CDVAE_COMMIT",
    "DIFFCSP_COMMIT",
    "REGISTRY",
    "DatasetSpec",
    "SplitFile",
    "dataset_names",
    "get_spec",
]

CDVAE_COMMIT = "f857f598d6f6cca5dc1ea0582d228f12dcc2c2ea"
DIFFCSP_COMMIT = "7121d159826efa2ba9500bf299250d96da37f146"

_CDVAE_URL = f"https://raw.githubusercontent.com/txie-93/cdvae/{CDVAE_COMMIT}/data/{{name}}/{{split}}.csv"
_DIFFCSP_URL = (
    f"https://raw.githubusercontent.com/jiaor17/DiffCSP/{DIFFCSP_COMMIT}/data/{{name}}/{{split}}.csv"
)

_CDVAE_CITATION = (
    "Xie, Fu, Ganea, Barzilay, Jaakkola (2021). Crystal Diffusion Variational Autoencoder for Periodic "
    "Material Generation. arXiv:2110.06197"
)
_DIFFCSP_CITATION = (
    "Jiao, Huang, Lin, Han, Chen, Lu, Liu (2023). Crystal Structure Prediction by Joint Equivariant "
    "Diffusion. arXiv:2309.04475"
)
_MP_CITATION = (
    "Jain et al. (2013). Commentary: The Materials Project: A materials genome approach to accelerating "
    "materials innovation. APL Materials 1, 011002"
)


@dataclass(frozen=True)
class SplitFile:
    """One pinned upstream file of a dataset split.

    Attributes:
        split: split name (``train``, ``val`` or ``test``).
        git_blob: git blob id of the file, ``sha1(b"blob <size>\\0" + bytes)``; always known.
        sha256: sha256 hex digest of the file, or None where it is not known.
        n_rows: number of data rows, where counted; None otherwise.
        size_bytes: file size in bytes, where known.
    """

    split: str
    git_blob: str
    sha256: str | None = None
    n_rows: int | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the project needs to fetch, verify, load and cite one dataset.

    Attributes:
        name: registry key, also the folder name in a data dir (``<data_dir>/<name>/<split>.csv``).
        description: one or two sentences on what the dataset is.
        url_template: raw URL of a split file with ``{name}`` and ``{split}`` placeholders, pinned to a
            commit; None for a dataset built in code.
        files: the pinned file of every split.
        property: the property column models condition on or optimise (the upstream ``prop``).
        max_atoms: largest number of sites of any structure in the dataset.
        citation: how to cite the data.
        licence: licence of the files and of the primary data.
        property_columns: numeric property columns documented for the files (besides ``property``).
        builtin: True for datasets built in code (no file, no download).
        builtin_splits: split names of a built-in dataset.
        elements: the chemical elements of all splits, stated where there are few (Carbon-24: ``("C",)``);
            None where not stated. The board uses it to tell that composition metrics do not apply to old
            records (:mod:`bench.applicability`).
    """

    name: str
    description: str
    url_template: str | None
    files: tuple[SplitFile, ...]
    property: str | None
    max_atoms: int
    citation: str
    licence: str
    property_columns: tuple[str, ...] = ()
    builtin: bool = False
    builtin_splits: tuple[str, ...] = ()
    elements: tuple[str, ...] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the splits of this dataset, in registry order."""
        if self.builtin:
            return self.builtin_splits
        return tuple(f.split for f in self.files)

    def check_split(self, split: str) -> None:
        """Raise a ValueError naming the bad split and the valid ones.

        Args:
            split: split name to check.
        """
        if split not in self.splits:
            raise ValueError(
                f"dataset {self.name!r} has no split {split!r}; valid splits: {', '.join(self.splits)}"
            )

    def split_file(self, split: str) -> SplitFile:
        """The pinned file of ``split``.

        Args:
            split: split name.

        Returns:
            The split's :class:`SplitFile`.

        Raises:
            ValueError: if the split does not exist or the dataset is built in (has no files).
        """
        self.check_split(split)
        if self.builtin:
            raise ValueError(f"dataset {self.name!r} is built in code and has no files")
        return next(f for f in self.files if f.split == split)

    def url(self, split: str) -> str:
        """The pinned upstream URL of ``split``'s file.

        Args:
            split: split name.

        Returns:
            The URL.
        """
        self.split_file(split)
        if self.url_template is None:
            raise ValueError(f"dataset {self.name!r} has no download URL")
        return self.url_template.format(name=self.name, split=split)


REGISTRY: dict[str, DatasetSpec] = {
    "perov_5": DatasetSpec(
        name="perov_5",
        description=(
            "Perov-5 (CDVAE): 18,928 cubic perovskites with exactly 5 atoms and 56 elements, from the "
            "Computational Materials Repository (Castelli et al. 2012)."
        ),
        url_template=_CDVAE_URL,
        files=(
            SplitFile("train", "0769074b5d51d293b765c4371b8f55c468c9c9f2"),
            SplitFile(
                "val",
                "4a2c8dde98347dd0e01fa83dcf3982c2abe98f9f",
                "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2",
                n_rows=3787,
                size_bytes=3_673_814,
            ),
            SplitFile(
                "test",
                "d3c5d5af4b27a2a139149f2bb73c8a3dba9d8ac1",
                "a85878c685037f0a578257f6d4fcdde00e968dbab73c5f1e90ecef65218513f6",
                n_rows=3785,
                size_bytes=3_671_842,
            ),
        ),
        property="heat_ref",
        max_atoms=5,
        citation=(f"{_CDVAE_CITATION}; Castelli et al. (2012), Energy Environ. Sci. 5, 9034 and 5, 5814"),
        licence=(
            "CDVAE repository: MIT (c) 2021 Tian Xie, Xiang Fu; data derived from the CMR perovskite database"
        ),
        property_columns=("heat_ref", "heat_all", "dir_gap", "ind_gap"),
    ),
    "carbon_24": DatasetSpec(
        name="carbon_24",
        description=(
            "Carbon-24 (CDVAE): 10,153 carbon polymorphs with 6 to 24 atoms, the lowest-energy 10% of the "
            "AIRSS carbon structures at 10 GPa (Pickard 2020)."
        ),
        url_template=_CDVAE_URL,
        files=(
            SplitFile("train", "5e7ae970fbad8ddc46b6963e8cd6e425f11783a6"),
            SplitFile(
                "val",
                "b3e29b927883642426ca1d9632d00359b412742b",
                "36c00689cd63073c954a58bc6ed6e2adb7aeed5a630c994970959a1babffd50e",
                n_rows=2032,
                size_bytes=2_321_923,
            ),
            SplitFile(
                "test",
                "9beca843fde489de1fe288b32f9e3ff710d42803",
                "386b17c08816f434818d51e46687bf72ff3f92348f3ba24823e4758f1fe8a969",
                n_rows=2030,
                size_bytes=2_319_350,
            ),
        ),
        property="energy_per_atom",
        max_atoms=24,
        citation=(
            f"{_CDVAE_CITATION}; Pickard (2020), AIRSS data for carbon at 10GPa and the C+N+H+O system "
            "at 1GPa, Materials Cloud Archive 2020.0026/v1"
        ),
        licence=(
            "CDVAE repository: MIT (c) 2021 Tian Xie, Xiang Fu; data from Materials Cloud Archive "
            "2020.0026/v1 (open access, normally CC BY 4.0)"
        ),
        property_columns=("energy_per_atom",),
        elements=("C",),
    ),
    "mp_20": DatasetSpec(
        name="mp_20",
        description=(
            "MP-20 (CDVAE): 45,231 Materials Project structures with 1 to 20 atoms, e_above_hull < 0.08 "
            "eV/atom and formation energy < 2 eV/atom (89 elements)."
        ),
        url_template=_CDVAE_URL,
        files=(
            SplitFile("train", "b1c9d498565ac2fd8d075a51ff2ef5e51ba6c21f"),
            SplitFile("val", "7efe4d7ebeb4f460ceaad35e5326c42111d9c9a1"),
            SplitFile("test", "5dc643041df53f5ce4970a79930ad262b4f07acd"),
        ),
        property="formation_energy_per_atom",
        max_atoms=20,
        citation=f"{_CDVAE_CITATION}; {_MP_CITATION}",
        licence="CDVAE repository: MIT (c) 2021 Tian Xie, Xiang Fu; Materials Project data: CC BY 4.0",
        property_columns=("formation_energy_per_atom", "band_gap", "e_above_hull", "spacegroup.number"),
    ),
    "mpts_52": DatasetSpec(
        name="mpts_52",
        description=(
            "MPTS-52 (DiffCSP): about 40.5k Materials Project structures with up to 52 atoms, split "
            "chronologically (Baird & Sparks' Materials Project time split)."
        ),
        url_template=_DIFFCSP_URL,
        files=(
            SplitFile("train", "28c53b0a0fd3f32fb8078aca8e5b484e372790c6"),
            SplitFile("val", "a377ba0ca7bee37ee69d9f50f8362eaa35d9f690"),
            SplitFile("test", "2e8af159618f63be346b6527f155514323964423"),
        ),
        property="formation_energy_per_atom",
        max_atoms=52,
        citation=(
            f"{_DIFFCSP_CITATION}; {_MP_CITATION}; Baird & Sparks, Materials Project Time Split Data, "
            "figshare doi:10.6084/m9.figshare.19991516"
        ),
        licence="DiffCSP repository: MIT (c) 2023 Rui Jiao; Materials Project data: CC BY 4.0",
        property_columns=("formation_energy_per_atom",),
    ),
    "tiny": DatasetSpec(
        name="tiny",
        description=(
            "Tiny hand-built structures (rock salts, perovskites, metals, CsCl and zincblende types) for "
            "unit tests only; not a benchmark."
        ),
        url_template=None,
        files=(),
        property="density",
        max_atoms=8,
        citation="matgenbench (built in code)",
        licence="MIT (matgenbench)",
        property_columns=("density",),
        builtin=True,
        builtin_splits=("train", "val", "test"),
    ),
}


def dataset_names() -> list[str]:
    """Names of all registered datasets, in registry order."""
    return list(REGISTRY)


class UnknownDatasetError(ValueError):
    """A dataset name that is not in the registry; the message lists the valid names."""


def get_spec(name: str) -> DatasetSpec:
    """Look a dataset up by name.

    Args:
        name: registry key, e.g. ``perov_5``.

    Returns:
        The dataset's spec.

    Raises:
        UnknownDatasetError: if ``name`` is not registered; the message lists the valid names.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownDatasetError(f"unknown dataset {name!r}; valid choices: {', '.join(REGISTRY)}") from None
