"""The pipeline configuration: one typed config per stage, composed and cross-checked.

Each stage module owns its config class (``extra="forbid"``: an unknown key is an error that
names its path). This module composes them into :class:`PipelineConfig`, checks what spans
stages *before any graph is built* (store chunks vs. the network's pooling grid and halo),
and loads YAML or TOML files with ``--set key.path=value`` overrides.

``configs/reference.yaml`` lists every option with its default; it is generated from these
classes by ``pausdenoise.config.reference_yaml()`` and a test keeps it in sync.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pausdenoise.cluster import ClusterConfig
from pausdenoise.denoise.config import DenoiseConfig
from pausdenoise.denoise.restore import block_overlap
from pausdenoise.errors import ConfigError
from pausdenoise.evaluate import EvaluateConfig
from pausdenoise.gan.config import GanTrainConfig
from pausdenoise.ingest.config import IngestConfig
from pausdenoise.inject.config import InjectConfig
from pausdenoise.n2v.config import TrainConfig
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.stack import StackConfig

STAGES: tuple[str, ...] = (
    "simulate",
    "ingest",
    "train",
    "denoise",
    "stack",
    "gan",
    "photometry",
    "inject",
    "compare",
    "evaluate",
    "report",
)
"""Pipeline stages in execution order (``info`` is a read-only command, not a stage)."""




class InputConfig(BaseModel):
    """Where the pipeline's input comes from."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["simulate", "fits", "store"] = Field(
        "simulate",
        description="'simulate': render the built-in survey into the run directory; 'fits': "
        "ingest existing FITS (fits_path); 'store': use an existing Zarr store (store_path).",
    )
    fits_path: Path | list[Path] | None = Field(
        None,
        description="Directory, FITS file or glob pattern (e.g. 'night1/*.fits.fz'), or a "
        "list of them; plain, gzip (.fits.gz) and tile-compressed (.fits.fz) FITS.",
    )
    store_path: Path | None = Field(None, description="An existing survey store to use as is.")
    catalogue: Path | None = Field(
        None,
        description="Reference catalogue (Parquet, CSV or FITS table; PAUS per-frame columns, "
        "or a sky catalogue ref_id, ra, dec, a, b, theta placed through each frame's WCS); "
        "default: the simulated survey's catalogue.parquet.",
    )
    catalogue_magnitude: str | None = Field(
        None,
        description="Catalogue column of AB magnitudes that the comparison bins by and the "
        "error model is fitted per bin of, taken as I_auto (e.g. MAG_AUTO of a SExtractor "
        "catalogue whose MAG_ZEROPOINT was AB, phot_g_mean_mag of Gaia); None: the "
        "catalogue's own I_auto, if it has one.",
    )
    catalogue_frame: str | None = Field(
        None,
        description="The frame an image catalogue (pixel positions of one image: "
        "SExtractor's X_IMAGE/Y_IMAGE, or aperture_x/aperture_y without expnum/ccd) was "
        "made on: its frame id (e.g. 00000001_01) or FITS file name. Needed when the store "
        "holds several frames: the catalogue is then placed on every exposure, through the "
        "frames' WCS or, for frames without one, by registering each frame of that CCD to it "
        "by cross-correlation (sub-pixel offsets); axes keep their size in pixels. None: the "
        "store's only frame.",
    )
    checkpoint: Path | None = Field(
        None, description="Reuse this trained N2V checkpoint instead of training."
    )

    @field_validator("catalogue_frame", mode="before")
    @classmethod
    def _frame_name(cls, value: object) -> object:
        """Refuse a frame name that YAML has read as a number, saying to quote it.

        Returns
        -------
        object
            ``value`` unchanged when it is not a number.

        Raises
        ------
        ValueError
            For an int or float (``00000001_01`` unquoted in a YAML file).
        """
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"a frame name, not the number {value!r}: YAML reads an "
                             "unquoted 00000001_01 as a number; quote it ('00000001_01')")
        return value

    @model_validator(mode="after")
    def _check(self) -> InputConfig:
        if self.source == "fits" and self.fits_path is None:
            raise ValueError("input.source = 'fits' needs input.fits_path")
        if self.source == "store" and self.store_path is None:
            raise ValueError("input.source = 'store' needs input.store_path")
        return self


class CompareConfig(BaseModel):
    """How the cross-exposure comparison and the denoised error model are computed."""

    model_config = ConfigDict(extra="forbid")

    bins: list[float] = Field(
        default_factory=lambda: [17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0],
        description="Edges of the I_auto bins (AB mag); default 1-mag bins 17–23.",
    )
    exclude_flagged: bool = Field(True, description="Drop flagged measurements before pairing.")
    denoised_transfer: Literal["none", "inject"] = Field(
        "none",
        description="'inject': divide every denoised flux (flux_cal and flux_cal_err) by the "
        "transfer function the inject stage measured for its band and I_auto bin "
        "(<run>/inject/transfer.csv: median denoised / true aperture flux of injected "
        "galaxies), so the pairs, σ68 and the error model describe an unbiased denoised flux; "
        "bins without a measured transfer are left as they are. Needs inject.enabled.",
    )
    relative_zp: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Relative zero-points of the exposures from the sources they share "
        "(pausdenoise/relative_zp.py): each frame's flux scale fitted by alternating medians "
        "on the raw fluxes of bright sources seen on two frames or more, and every frame's "
        "calibrated fluxes and errors (raw and denoised) divided by it before pairing, so "
        "that exposure time and transparency do not pose as flux errors; written to "
        "compare/relative_zp.csv. 'auto': for the bands whose frames all have the ingest's "
        "default zero-point (zp_source 'default': uncalibrated frames); 'on': every band; "
        "'off': the zero-points as ingested. Bands of one frame are left as they are; frames "
        "without enough sources are left out of the comparison.",
    )
    aperture_correction: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Aperture corrections (pausdenoise/photometry/apcor.py): from every "
        "calibrated flux (raw and denoised) the light its neighbours put into its aperture "
        "(aper_neighbours, from their profile fluxes) is taken out, and the rest divided by "
        "aper_frac, the share of the source's catalogue profile convolved with the frame's PSF "
        "that its aperture catches (errors alike), so that neither the seeing of an exposure "
        "nor the crowding poses as a flux error and the fluxes estimate the sources' own total "
        "fluxes; the truth comparison then uses the true total flux. 'auto': "
        "for the bands whose photometry carries aper_frac (photometry.profile and a PSF) "
        "from catalogue shapes (profile_hlr, profile_q, profile_bulge_frac; without them the "
        "shapes would be guessed from the apertures and the band is left as measured); 'on': "
        "every band, guessed shapes too, an error without aper_frac; 'off': the aperture "
        "fluxes as measured. Rows "
        "without an aperture share are left out of the comparison.",
    )
    relative_zp_snr: float = Field(
        20.0, gt=0, description="Relative zero-points: a source is used when the median S/N "
        "of its raw, unflagged measurements is at least this.")
    relative_zp_min_sources: int = Field(
        5, ge=1, description="Relative zero-points: a frame needs this many usable sources "
        "(each also on another frame) for a scale; without one it leaves the comparison.")
    floor_snr: float = Field(
        50.0, gt=0, description="Repeatability floor of the raw fluxes "
        "(compare/repeatability_floor.csv): the relative error that, added to every raw "
        "error, brings σ68 of Δf to 1 is measured per band on the pairs whose S/N of the sum "
        "is at least this (where a floor of a few per cent is comparable to the errors).")
    folds: int = Field(
        2, ge=2, description="Cross-validation of the error model: exposures are dealt into "
        "this many groups, stratified by band; each group's pairs are judged by a model fitted "
        "on the pairs of the other groups' exposures. The reported model is fitted on all."
    )
    max_pairs: int = Field(
        10_000_000, ge=10, description="Pairs kept for the σ68 statistics and the error "
        "model (~150 bytes each at the stage's peak, measured); above it, exactly this many: "
        "the pairs with the smallest hash of (source, band, exposures, compare.seed), a "
        "deterministic uniform sample without replacement (pair counts stay exact). Each "
        "band's task returns at most this many; the driver holds ~2× this while merging. The "
        "archive has ~10^8–10^9 pairs; 10^7 gives σ68 to ~0.1 % per bin."
    )
    band_factors: bool = Field(
        True, description="Error model with a factor per band, g(band), on top of s(I_auto): "
        "at a given I_auto the band's S/N, hence the denoiser's noise reduction, differs."
    )
    seed: int = Field(0, description="Seed of the cross-validation split of exposures and "
                      "of the pair hash that chooses the pairs kept above max_pairs.")
    min_fit_pairs: int = Field(30, ge=1, description="Fit a bin's own scale from this many pairs.")
    min_validate_pairs: int = Field(
        100, ge=1, description="Judge a bin pass/fail only with at least this many pairs."
    )
    tolerance: float = Field(0.05, gt=0, description="Pass when |σ68 − 1| ≤ tolerance.")

    @field_validator("relative_zp", "aperture_correction", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        """Read YAML's ``on``/``off`` (booleans to a YAML 1.1 parser) as the words.

        Returns
        -------
        object
            'on' for True, 'off' for False, anything else unchanged.
        """
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class ReportConfig(BaseModel):
    """What the report shows."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field("pausdenoise run report", description="Title of the HTML report.")
    n_stamps: int = Field(6, ge=1, le=20, description="Galaxy stamps shown (raw vs denoised).")
    stamp_size: int = Field(40, ge=8, description="Stamp side (px).")
    dpi: int = Field(110, ge=50, le=300, description="Figure resolution (dots per inch).")


class GanApplyConfig(BaseModel):
    """How the trained cGAN generator is applied to whole frames (map_overlap)."""

    model_config = ConfigDict(extra="forbid")

    chunks: tuple[int, int] | None = Field(
        None,
        description="Dask chunks (px) the generator is applied on; default: the store's "
        "write chunks (ingest.chunks). Multiples of 2**gan.train.generator.depth and at least "
        "the halo; the output is rechunked to the image's chunks before it is written.",
    )
    halo: int | None = Field(
        None, description="Overlap (px) of the tiles; default: the generator's halo (its "
        "receptive-field radius rounded up to 2**depth). A multiple of 2**depth."
    )


class GanPipelineConfig(BaseModel):
    """Stacking and the pix2pix cGAN (single exposure → stack); off unless ``enabled``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Run the stack and gan stages (after denoise) in 'run'."
    )
    stack: StackConfig = Field(
        default_factory=StackConfig,
        description="How exposures are co-added (pausdenoise.stack.StackConfig).",
    )
    cutout_size: int = Field(
        128, ge=16, description="Side (px) of the training cutouts; a multiple of 2**depth."
    )
    cutout_stride: int = Field(
        100, ge=1, description="Step (px) between training cutouts (128/100: 28 px overlap)."
    )
    max_pairs_per_frame: int | None = Field(
        None, ge=1, description="Keep at most this many cutout pairs per training exposure."
    )
    train: GanTrainConfig = Field(
        default_factory=GanTrainConfig,
        description="pix2pix training (pausdenoise.gan.train.GanTrainConfig).",
    )
    apply: GanApplyConfig = Field(
        default_factory=GanApplyConfig,
        description="Tiled application of the trained generator to the held-out frames.",
    )
    scatter_pixels: int = Field(
        20000, ge=100, description="Pixels sampled for the report's pixel-value scatter plot."
    )

    @model_validator(mode="after")
    def _check(self) -> GanPipelineConfig:
        m = self.train.generator.size_multiple
        if self.cutout_size % m:
            raise ValueError(
                f"gan.cutout_size = {self.cutout_size} is not a multiple of 2**depth = {m} "
                f"(gan.train.generator.depth = {self.train.generator.depth})"
            )
        if self.cutout_stride > self.cutout_size:
            raise ValueError("gan.cutout_stride must not exceed gan.cutout_size")
        return self


class PipelineConfig(BaseModel):
    """Everything a ``pausdenoise run`` needs; every section has serviceable defaults."""

    model_config = ConfigDict(extra="forbid")

    input: InputConfig = Field(
        default_factory=InputConfig,
        description="Where the survey comes from (simulated, FITS files or an existing store) "
        "and optional inputs to reuse.",
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig,
        description="The Dask cluster the parallel stages run on (--cluster overrides kind).",
    )
    simulate: SimulationConfig = Field(
        default_factory=SimulationConfig,
        description="The simulated PAUCam-like survey (input.source 'simulate').",
    )
    ingest: IngestConfig = Field(
        default_factory=IngestConfig,
        description="FITS frames -> the Zarr survey store: layout, header keywords, "
        "zero-points, chunking.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Noise2Void training of the U-Net."
    )
    denoise: DenoiseConfig = Field(
        default_factory=DenoiseConfig,
        description="Denoising every frame of the store with the trained network.",
    )
    photometry: PhotometryConfig = Field(
        default_factory=PhotometryConfig,
        description="Forced aperture photometry on the raw and denoised images.",
    )
    inject: InjectConfig = Field(
        default_factory=InjectConfig,
        description="Source injection: GalSim galaxies of known flux added to the raw frames "
        "(a separate store), denoised and measured, giving bias and scatter per magnitude bin "
        "against the truth on any data (run when inject.enabled).",
    )
    compare: CompareConfig = Field(
        default_factory=CompareConfig,
        description="Cross-exposure statistics of the photometry and the calibrated errors.",
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig,
        description="Metrics against the truth (simulation) or independent exposures.",
    )
    report: ReportConfig = Field(
        default_factory=ReportConfig, description="Figures and the HTML report."
    )
    gan: GanPipelineConfig = Field(
        default_factory=GanPipelineConfig,
        description="Optional stacking and pix2pix cGAN stages (run when gan.enabled).",
    )
    holdout_exposures_per_band: int = Field(
        1,
        ge=0,
        description="Exposures per band kept out of training (the last ones), on which the "
        "denoiser is evaluated against the truth and the error model is validated.",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        check_chunking(self)
        if self.gan.enabled:
            check_gan_chunking(self)
        return self


def network_halo(cfg: PipelineConfig) -> tuple[int, int]:
    """Return the halo and pooling grid of the configured N2V network.

    The network is built (not trained) to derive them from its receptive field.

    Parameters
    ----------
    cfg : PipelineConfig
        The pipeline configuration (``train.unet``, ``train.noise_scale``, ``denoise.halo``).

    Returns
    -------
    tuple of int
        ``(halo, 2**depth)`` in px.

    Raises
    ------
    ValueError
        If ``denoise.halo`` is set below the halo the receptive field needs.
    """
    # torch only here: the halo is derived from the built network, so that it is never typed
    # twice; importing this module stays torch-free.
    from pausdenoise.n2v.unet import UNet

    unet = UNet(cfg.train.unet.to_unet_config(cfg.train.noise_scale, cfg.train.sky_noise_variance))
    halo = unet.halo()
    if cfg.denoise.halo is not None:
        if cfg.denoise.halo < halo:
            raise ValueError(
                f"denoise.halo = {cfg.denoise.halo} is smaller than the halo of {halo} px "
                "derived from the network's receptive field (seams would appear); remove it "
                f"or set it to at least {halo}"
            )
        halo = cfg.denoise.halo
    return halo, unet.config.size_multiple


def denoise_overlap(cfg: PipelineConfig) -> tuple[int, int]:
    """Return the halo of the denoise stage's blocks and the network's pooling grid.

    Parameters
    ----------
    cfg : PipelineConfig
        The pipeline configuration (the network, ``denoise.halo``, ``denoise.restore_*``).

    Returns
    -------
    tuple of int
        ``(overlap, 2**depth)`` in px: the network's halo (:func:`network_halo`), widened by
        the catalogue restoration's reach when ``denoise.restore_catalogue`` is on
        (:func:`pausdenoise.denoise.restore.block_overlap`).
    """
    halo, m = network_halo(cfg)
    return block_overlap(halo, cfg.denoise, m), m


def check_chunking(cfg: PipelineConfig) -> None:
    """Check that store chunks are multiples of ``2**depth`` and at least the network's halo.

    With ``denoise.restore_catalogue`` the halo is the one-pass block's
    (:func:`pausdenoise.denoise.restore.restore_overlap`).

    Parameters
    ----------
    cfg : PipelineConfig
        The pipeline configuration (``ingest.chunks``, ``train.unet``, ``denoise.halo``).

    Raises
    ------
    ValueError
        Naming the keys and suggesting a chunking that works.
    """
    halo, m = network_halo(cfg)
    if cfg.denoise.halo is not None and cfg.denoise.halo % m:
        raise ValueError(f"denoise.halo = {cfg.denoise.halo} must be a multiple of 2**depth = {m}")
    reach = "derived from its receptive field"
    if cfg.denoise.restore_catalogue:  # the restoration runs in the network's block
        halo, _ = denoise_overlap(cfg)
        reach = ("derived from its receptive field plus the catalogue restoration's reach "
                 f"(denoise.restore_sigma = {cfg.denoise.restore_sigma:g} px)")
    _check_tiles(tuple(cfg.ingest.chunks), m, halo, "ingest.chunks", "the network",
                 f"train.unet.depth = {cfg.train.unet.depth}", "ingest.chunks", reach)


def _check_tiles(chunks: tuple[int, ...], m: int, halo: int, key: str, what: str,
                 depth_note: str, suggest_key: str,
                 reach: str = "derived from its receptive field") -> None:
    """Refuse chunk sides that are not multiples of ``m = 2**depth`` or below ``halo`` px.

    Raises
    ------
    ValueError
        Naming ``key`` and suggesting ``suggest_key`` values that work.
    """
    if any(c % m or c < halo for c in chunks):
        good = [max(-(-c // m) * m, -(-halo // m) * m) for c in chunks]
        raise ValueError(
            f"{key} = {list(chunks)} does not fit {what}: chunk sides must be multiples of "
            f"2**depth = {m} ({depth_note}) and at least its halo of {halo} px {reach}; "
            f"try {suggest_key} = {good}"
        )


def gan_halo(cfg: PipelineConfig) -> tuple[int, int]:
    """Return the halo and pooling grid of the configured cGAN generator (built, not trained).

    Parameters
    ----------
    cfg : PipelineConfig
        The pipeline configuration (``gan.train.generator``, ``gan.apply.halo``).

    Returns
    -------
    tuple of int
        ``(halo, 2**depth)`` in px.
    """
    # torch only here, as in network_halo: the halo comes from the built generator.
    from pausdenoise.gan.models import Generator

    gen = Generator(cfg.gan.train.generator)
    halo = gen.halo() if cfg.gan.apply.halo is None else cfg.gan.apply.halo
    return halo, gen.config.size_multiple


def check_gan_chunking(cfg: PipelineConfig) -> None:
    """Check that the cGAN's apply chunks fit the generator's pooling grid and halo.

    Chunk sides must be multiples of ``2**depth`` and at least the generator's halo.

    Parameters
    ----------
    cfg : PipelineConfig
        The pipeline configuration (``gan.apply``, ``gan.train.generator``,
        ``ingest.chunks``).

    Raises
    ------
    ValueError
        Naming the keys and suggesting a chunking that works.
    """
    from pausdenoise.gan.models import Generator  # torch only here, as in gan_halo

    halo, m = gan_halo(cfg)
    r = Generator(cfg.gan.train.generator).receptive_field_radius()
    if halo % m or halo < r:
        raise ValueError(
            f"gan.apply.halo = {halo} must be a multiple of 2**depth = {m} and at least the "
            f"generator's receptive-field radius of {r} px; try gan.apply.halo = "
            f"{-(-r // m) * m}"
        )
    key = "gan.apply.chunks" if cfg.gan.apply.chunks is not None else "ingest.chunks"
    _check_tiles(tuple(cfg.gan.apply.chunks or cfg.ingest.chunks), m, halo, key,
                 "the cGAN generator",
                 f"gan.train.generator.depth = {cfg.gan.train.generator.depth}",
                 "gan.apply.chunks")


# --------------------------------------------------------------------------- loading


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:]}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _is_text_option(parts: list[str]) -> bool:
    """Tell whether a dotted option path names a text option (``str`` or ``str | None``).

    Returns
    -------
    bool
        True when the option's annotation allows ``str`` and nothing but None besides, so
        that its ``--set`` value is taken as written (YAML would read ``00000001_01`` as a
        number and ``off`` as False); False for any other option or an unknown path.
    """
    model: Any = PipelineConfig
    for i, part in enumerate(parts):
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        kind = field.annotation
        if get_origin(kind) in (Union, UnionType):  # X | None: X
            rest = [a for a in get_args(kind) if a is not type(None)]
            kind = rest[0] if len(rest) == 1 else None
        if i == len(parts) - 1:
            return kind is str
        model = kind
    return False


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p} is not a section")
    if _is_text_option(parts):  # a name such as 00000001_01 must not become a number
        text = raw.strip()
        quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
        null = not quoted and text in ("", "~", "null", "Null", "NULL")  # YAML's null
        node[parts[-1]] = None if null else text[1:-1] if quoted else text
        return
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({' '.join(str(exc).split())}); "
            f"quote it, e.g. "
            f"{key.strip()}='\"{raw}\"'"
        ) from None


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = [f"{source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not an option of this section)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(
    path: Path | None,
    *,
    overrides: list[str] | None = None,
    cluster: str | None = None,
) -> PipelineConfig:
    """Read a YAML/TOML pipeline config, apply ``key.path=value`` overrides, validate.

    Parameters
    ----------
    path : Path or None
        The ``.yaml``/``.yml``/``.toml`` file; ``None`` for the defaults.
    overrides : list of str, optional
        ``key.path=value`` items (values parsed as YAML), applied in order.
    cluster : str, optional
        Shortcut for ``cluster.kind``.

    Returns
    -------
    PipelineConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        For an unreadable file, an unknown key (named with its full path) or an invalid or
        inconsistent value.
    """
    data: dict[str, Any] = _read_file(path) if path is not None else {}
    for item in overrides or []:
        _apply_override(data, item)
    if cluster is not None:
        data.setdefault("cluster", {})
        if not isinstance(data["cluster"], dict):
            raise ConfigError("cluster must be a section")
        data["cluster"]["kind"] = cluster
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, str(path or "configuration"))) from None


def reference_yaml() -> str:
    """Return every option with its default and description, as commented YAML.

    Returns
    -------
    str
        The text of ``configs/reference.yaml``.
    """
    lines = ["# pausdenoise pipeline configuration: every option with its default.",
             "# Generated by pausdenoise.config.reference_yaml(); keep in sync (tested).", ""]

    def walk(model: type[BaseModel], indent: int, value: BaseModel) -> None:
        pad = "  " * indent
        for name, field in model.model_fields.items():
            v = getattr(value, name)
            if field.description:
                lines.append(f"{pad}# {field.description}")
            if isinstance(v, BaseModel):
                lines.append(f"{pad}{name}:")
                walk(type(v), indent + 1, v)
            else:
                dumped = yaml.safe_dump(
                    {name: _plain(v)}, default_flow_style=True, sort_keys=False, width=10_000
                ).strip()
                lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    walk(PipelineConfig, 0, PipelineConfig())
    return "\n".join(lines) + "\n"


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


if __name__ == "__main__":  # python -m pausdenoise.config > configs/reference.yaml
    print(reference_yaml(), end="")
