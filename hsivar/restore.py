"""The one restoration path: a published model restores cubes (C, H, W) of any spatial size.

Every entry point (:meth:`Restorer.restore`, the batch job, the Serve endpoint, the evaluation)
restores a cube through the same three steps, so a new option is added once:

1. :func:`~hsivar.prepared.prepare_cube` — validate (rank, band count, finite values), exclude nodata
   voxels and the entries the source marks as not observed (a file's bad bands / mask), min–max normalise
   to [0, 1] (the model's range; ``value_range`` when the data's range is known), pad sides shorter than a
   tile; read the observation (detected, nodata, what the caller knows) and compute the classical first
   estimate for models that restore from it. CPU only, no model.
   :meth:`Restorer.observe` then adds what only the model can tell — the width of a blur, haze, a short
   exposure — when the task may be one of those (in ``auto`` mode the model's classifier decides; the width and
   the exposure are classical blind estimates, :mod:`hsivar.deblur`, :mod:`hsivar.exposure`), and recomputes the
   first estimate with it.
2. :meth:`Restorer.forward` — one forward pass of the model over a batch of tiles (and their first
   estimate); the only place the model's ``restore`` is called. :meth:`Restorer.restore_prepared` runs it
   over a prepared cube's tiles in batches, ``samples`` times with generators seeded ``seed + i``, blends
   each sample's tiles (:class:`~hsivar.tiling.TileBlender`) and makes it consistent with the observation
   (:mod:`hsivar.consistency`); Serve batches single tiles of concurrent requests through
   :meth:`Restorer.forward` and blends them with :meth:`PreparedCube.blender`.
3. :meth:`Restorer.finish` (:func:`~hsivar.prepared.finish`) — back to the input's units; the mean over samples
   is the restored cube; the uncertainty is the calibrated error bar (:mod:`hsivar.uncertainty`) of a calibrated
   model, else the per-pixel standard deviation over samples; exactly observed entries are put back bit for bit,
   nodata voxels written back as nodata.

Steps 1 and 3 need the model's configuration only: :class:`RestoreSpec` (built from ``config.json``, no weights) holds
them, and :class:`Restorer` extends it with the model. Serve's HTTP gateway, which holds no weights, checks
requests against a ``RestoreSpec`` (bands, tile, calibration); its model replica runs all three steps.

Greedy decoding is the default (restoration wants fidelity). With seeded top-k / top-p sampling,
``samples = N`` decodes N times. On CUDA the model runs under bf16 autocast; the quantiser stays fp32.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from hsivar.config import ModelConfig
from hsivar.deblur import blind_blur
from hsivar.degrade.observation import Observation
from hsivar.exposure import estimate_exposure
from hsivar.memo import DecodedTiles
from hsivar.models.base import Guidance, RestorationModel
from hsivar.models.dag import AutoAmong, TaskSpec
from hsivar.models.graphs import GraphedRestore
from hsivar.models.var import GREEDY, Sampling
from hsivar.prepared import NothingToRestore, PreparedCube, RestoreInputError, calibrated_std, finish, prepare_cube
from hsivar.publish import load_published
from hsivar.uncertainty import mix

if TYPE_CHECKING:  # a DataArray input (hsivar.io.dataarray); xarray is imported only when one is passed
    import xarray

__all__ = ["NothingToRestore", "PreparedCube", "RestoreInputError", "RestoreSpec", "RestoredSamples", "Restoration",
           "Restorer", "calibrated_std", "decoding", "finish", "parse_value_range", "prepare_cube", "resolve_overlap"]


def resolve_overlap(model_tile: int, tile: int | None, overlap: int | None) -> int:
    """The tile overlap in pixels for a model with ``model_tile``-pixel tiles (default S/4).

    Raises:
        RestoreInputError: ``tile`` given and not the model's tile, or ``overlap`` outside [0, S).
    """
    if tile is not None and tile != model_tile:
        raise RestoreInputError(f"this model restores {model_tile}×{model_tile} tiles; tile={tile} is not possible")
    overlap = model_tile // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < model_tile:
        raise RestoreInputError(f"overlap must be in [0, {model_tile}), got {overlap}")
    return overlap


def parse_value_range(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` (input units) → (lo, hi); None or "" → None.

    Raises:
        ValueError: not two numbers, or HI ≤ LO (the message quotes the text).
    """
    if text is None or not text.strip():
        return None
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:  # not two numbers
        raise ValueError(f"value_range must be LO,HI with HI > LO, got {text!r}") from None
    if not hi > lo:
        raise ValueError(f"value_range must be LO,HI with HI > LO, got {text!r}")
    return lo, hi


MAX_SEED = 2**63 - 1
"""The largest generator seed (torch seeds are 64-bit; sample i of a restoration uses ``seed + i``)."""


def decoding(samples: int, batch_size: int = 1, sampling: Sampling | None = None) -> Sampling:
    """The decoding of a restoration: greedy for one sample, seeded top-p 0.9 for several (or ``sampling``).

    Raises:
        RestoreInputError: ``samples`` or ``batch_size`` < 1, or greedy decoding with ``samples > 1``.
    """
    if samples < 1 or batch_size < 1:
        raise RestoreInputError(f"samples and batch_size must be ≥ 1 (got {samples}, {batch_size})")
    if sampling is None:
        sampling = GREEDY if samples == 1 else Sampling(greedy=False, top_p=0.9)
    if samples > 1 and sampling.greedy:
        raise RestoreInputError("samples > 1 needs sampling (greedy decoding gives identical samples)")
    return sampling


# ------------------------------------------------------------------------------------------ 2. the model


@dataclass
class Restoration:
    """A restored cube, in the input's units."""

    cube: np.ndarray  # (C, H, W) float32
    std: np.ndarray | None  # (C, H, W) float32: the calibrated error bar (std_calibrated), else the std over samples
    # (samples > 1), else None
    task_weights: dict[str, float]  # mean task weights over tiles and samples (the classifier's for "auto")
    tiles: int
    seconds: float
    kept: np.ndarray | None = None  # (C, H, W) bool: entries kept exactly as observed; the rest was synthesised
    observation: dict | None = None  # what was known of the observation (Observation.summary())
    std_calibrated: bool = False  # std is the calibrated error bar (|error| ≤ 2·std for ≈95 % of entries)


@dataclass
class RestoredSamples:
    """What :meth:`Restorer.restore_prepared` returns: per-sample blended cubes and the task weights used."""

    samples01: torch.Tensor  # (samples, C, H, W) float32 on the CPU, [0, 1] units
    task_weights: list[float]  # (N,) mean over tiles and samples, in the model's task order


class RestoreSpec:
    """What a model's configuration alone decides of a restoration — bands, tile, tasks, the first estimate, the
    calibrated uncertainty — and the CPU steps that need nothing more: :meth:`prepare`, :meth:`resolve_task`,
    :meth:`finish`. No weights: Serve's HTTP gateway builds one from ``read_config`` to check requests while the
    model lives in another process; :class:`Restorer` extends it with the model."""

    def __init__(self, cfg: ModelConfig) -> None:
        """The restoration steps of a model with configuration ``cfg`` (e.g. :func:`hsivar.publish.read_config`)."""
        self._cfg = cfg

    @property
    def cfg(self) -> ModelConfig:
        """The model's configuration."""
        return self._cfg

    @property
    def bands(self) -> int:
        """Band count C the model restores."""
        return self.cfg.vqvae.bands

    @property
    def tile(self) -> int:
        """Tile side S in pixels."""
        return self.cfg.vqvae.image_size

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task families of the model's task weights, in order."""
        return tuple(self.cfg.dag.tasks)

    @property
    def uses_estimate(self) -> bool:
        """Whether the model restores from the classical first estimate (``ModelConfig.first_estimate``)."""
        return bool(self.cfg.first_estimate)

    @property
    def calibrated(self) -> bool:
        """Whether the model carries a calibrated uncertainty (``ModelConfig.uncertainty``)."""
        return self.cfg.uncertainty is not None

    def uncertainty_coefficients(self, task_weights: Sequence[float]) -> np.ndarray | None:
        """The calibrated uncertainty's coefficients (F,) for task weights (N,) in the model's task order (the
        per-family coefficients mixed, :func:`hsivar.uncertainty.mix`); None for an uncalibrated model."""
        unc = self.cfg.uncertainty
        return None if unc is None else mix(unc.coefficients, task_weights)

    def finish(self, prep: PreparedCube, out: RestoredSamples,
               uncertainty: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """:func:`~hsivar.prepared.finish` with this model's calibrated error bar when it has one
        (:func:`~hsivar.prepared.calibrated_std` for the restoration's task weights). → (mean, std) as there;
        ``uncertainty=False``: std None, and the error bar is not computed (the mean does not depend on it)."""
        coef = self.uncertainty_coefficients(out.task_weights) if uncertainty else None
        std01 = None if coef is None else calibrated_std(prep, out.samples01, coef)
        mean, std = finish(prep, out.samples01, std01)
        return mean, std if uncertainty else None

    def prepare(self, cube: np.ndarray | torch.Tensor, overlap: int, *, nodata: float | None = None,
                value_range: tuple[float, float] | None = None, observation: Observation | None = None,
                missing: np.ndarray | None = None, consistency: bool = True,
                wavelengths: Sequence[float] | None = None) -> PreparedCube:
        """:func:`~hsivar.prepared.prepare_cube` for this model: its bands and tile, and the first estimate if it
        restores from one (``wavelengths`` in nm: the cube's, default the model's; ``missing`` (C, H, W) bool:
        the entries the source marks as not observed)."""
        return prepare_cube(cube, self.bands, self.tile, overlap, nodata=nodata, value_range=value_range,
                            observation=observation, missing=missing, consistency=consistency,
                            estimate=self.uses_estimate, wavelengths=wavelengths or self.cfg.wavelengths)

    def resolve_task(self, prep: PreparedCube, task: TaskSpec) -> TaskSpec:
        """``task`` for this cube: ``"auto"`` becomes :class:`~hsivar.models.dag.AutoAmong` the families the cube's
        own observation leaves plausible (:meth:`~hsivar.degrade.observation.Observation.plausible_tasks`), so the
        classifier weighs only those; any other task, or a cube whose observation rules nothing out, unchanged."""
        obs = prep.observation
        if not (isinstance(task, str) and task == "auto") or obs is None or not obs.plausible:
            return task
        allowed = tuple(t for t in obs.plausible if t in self.tasks)
        return AutoAmong(allowed) if allowed else task

    def unobserved(self, prep: PreparedCube) -> tuple[str, ...]:
        """The families among the model's tasks whose facts the cube's rules cannot show and ``prep``'s observation
        does not know yet — blur (its width), haze, low light (its exposure) — which :meth:`Restorer.observe` may
        add; empty without a cube to cut tiles from (Serve's model replica then skips the hop to its model
        thread)."""
        obs = prep.observation
        if obs is None or prep.cube01.numel() == 0:
            return ()
        return tuple(f for f in obs.unknown_facts() if f in self.tasks)


class Restorer(RestoreSpec):
    """Restore whole cubes with a published HSI-VAR model (see the module docstring)."""

    def __init__(self, model: RestorationModel, device: str | torch.device = "cpu", bf16: bool | None = None,
                 compiled: bool = False, compiled_batch_sizes: int = 16) -> None:
        """Wrap ``model`` on ``device``; ``bf16`` defaults to True on CUDA and is ignored on CPU.

        ``compiled``: on a GPU, replay each greedy restoration from a CUDA graph
        (:class:`~hsivar.models.graphs.GraphedRestore`: recorded on the first batch of each size and kind, one launch
        per batch after that), keeping up to ``compiled_batch_sizes`` graphs (past that, a batch is padded into a
        bigger one or runs eagerly); sampled decoding stays eager. On a CPU, decode through ``torch.compile``'d steps
        (:meth:`~hsivar.models.var.NextScaleTransformer.compile_steps`; the first restoration of each batch size
        pays the compilation, a minute for the tiny preset), keeping graphs for up to ``compiled_batch_sizes``
        distinct batch sizes (tiles per pass, doubled under classifier-free guidance)."""
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        super().__init__(self.model.cfg)  # unused: cfg below reads the model's current configuration
        self.bf16 = (self.device.type == "cuda") if bf16 is None else (bf16 and self.device.type == "cuda")
        self.graphs: GraphedRestore | None = None
        if compiled and self.device.type == "cuda":
            self.graphs = GraphedRestore(self.model, max_graphs=compiled_batch_sizes)
        elif compiled:
            self.model.var.compile_steps(batch_sizes=compiled_batch_sizes)

    @classmethod
    def from_published(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                       compiled: bool = False, compiled_batch_sizes: int = 16) -> Restorer:
        """Load a published model directory (safetensors + config.json; nothing is unpickled)."""
        model, _ = load_published(directory, device="cpu")
        return cls(model, device, compiled=compiled, compiled_batch_sizes=compiled_batch_sizes)

    @property
    def cfg(self) -> ModelConfig:
        """The model's configuration (current: calibration may change its ``fusion.trust``)."""
        return self.model.cfg

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task families of the model's task weights, in order."""
        return tuple(self.model.dag.tasks)

    def autocast(self) -> AbstractContextManager:
        """The context the model runs in: bf16 autocast on CUDA when ``bf16``, else a no-op."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    @torch.inference_mode()
    def forward(self, tiles01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                generator: torch.Generator | None = None, *, estimate01: torch.Tensor | None = None,
                guidance: Guidance = "dag", cfg_scale: float = 1.5, refine: bool = True,
                memo: DecodedTiles | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass over a batch of tiles.

        Args:
            tiles01: (b, C, S, S) in [0, 1] (any device; moved to the model's).
            task: ``"auto"``, a task name, a {task: weight} mixture or weights (b, N).
            sampling, generator: the decoding and its random source (seeded sampling).
            estimate01: (b, C, S, S) the tiles' classical first estimate (models with ``first_estimate``).
            guidance, cfg_scale, refine: as :meth:`hsivar.models.base.RestorationModel.restore`.
            memo: decoded tiles to reuse and keep (:mod:`hsivar.memo`) — used with greedy decoding, ignored
                otherwise: the batch's tiles, if all held, are only fused under ``task``; else decoded and kept. In
                a family whose token path reads the task, the weights are resolved first (the classifier for
                ``"auto"``), keyed, and the tiles decoded under exactly those.
        Returns:
            (restored tiles (b, C, S, S) float32 on the CPU in [0, 1], task weights used (b, N) float32 on the CPU).
        """
        x0 = None if estimate01 is None else estimate01.to(self.device)
        lq = tiles01.to(self.device)
        keys = None
        if memo is not None and sampling.greedy:
            read = None  # the task weights (b, N) the token path reads, if it reads any
            if self.model.token_path_reads_task:
                with self.autocast():
                    read = task = self.model.dag.weights(task, lq).float()
            keys = memo.keys(tiles01, estimate01, f"{guidance}:{cfg_scale}:{refine}:{self.bf16}", read)
            decoded = memo.get(keys)
            if decoded is not None:
                with self.autocast():
                    cube, weights = self.model.fuse(lq, decoded.to(self.device), task, estimate01=x0)
                return cube.float().cpu(), weights.float().cpu()
        with self.autocast():
            if self.graphs is not None and sampling.greedy:
                out = self.graphs(lq, task, guidance=guidance, cfg_scale=cfg_scale, refine=refine, estimate01=x0)
            else:
                out = self.model.restore(lq, task, sampling, generator, guidance, cfg_scale, refine, estimate01=x0)
        if keys is not None and out.decoded is not None:
            memo.put(keys, out.decoded)  # type: ignore[union-attr]
        return out.cube.float().cpu(), out.task_weights.float().cpu()

    def _share(self, task: TaskSpec, family: str) -> bool | None:
        """Whether ``task`` (resolved: :meth:`resolve_task`) gives ``family`` a share: True / False when it says so,
        None when only the model's classifier can tell (``"auto"``, or auto among several families)."""
        if isinstance(task, str):
            return None if task == "auto" else task == family
        if isinstance(task, AutoAmong):
            return None if family in task.tasks and len(task.tasks) > 1 else family in task.tasks
        if isinstance(task, Mapping):
            return float(task.get(family, 0)) > 0
        return float(task[..., self.tasks.index(family)].mean()) > 0

    @torch.inference_mode()
    def observe(self, prep: PreparedCube, task: TaskSpec = "auto", max_tiles: int = 16) -> PreparedCube:
        """The facts of blind restoration that only the model can tell from a cube (:meth:`unobserved`): the width of a
        blur, haze, a short exposure — each when the observation knows none and the task may be that family:
        named, a share of a mixture or of weights, ``"auto"`` whose plausible families (:meth:`resolve_task`) are
        that one alone, or ``"auto"`` among several where the model's classifier gives it a mean weight of at least
        one half over up to ``max_tiles`` tiles spread over the cube. Then the classical estimate: the blur width σ
        from the power spectrum over up to ``max_tiles`` windows and the blur's boundary read once on it (unless
        known), the width refined by the data fit when the cube is noiseless, zero-padded and at most 128 px a side
        (times the ratio that deconvolved best on the model's validation cubes, ``cfg.fit_width_scale``),
        otherwise less what the model's data read when sharp (``cfg.sharp_width``, in quadrature)
        (:func:`hsivar.deblur.blind_blur`; none when no window shows a blur), the exposure from the cube's
        brightness (:func:`hsivar.exposure.estimate_exposure`; none when it is as bright as a normal scene); haze
        needs no number. The first estimate and the kept entries follow (:meth:`PreparedCube.reobserved`);
        otherwise ``prep`` is returned unchanged.
        """
        obs = prep.observation
        families = self.unobserved(prep)
        if obs is None or not families:
            return prep
        task = self.resolve_task(prep, task)
        shares = {f: self._share(task, f) for f in families}
        ask = [f for f, share in shares.items() if share is None]
        if ask:  # one classifier pass for every family it must weigh
            n = len(prep.coords)
            pick = np.unique(np.linspace(0, n - 1, min(max_tiles, n)).round().astype(int))
            tiles = torch.cat([prep.tiles(int(i), int(i) + 1) for i in pick])
            with self.autocast():
                weights = self.model.dag.weights(task, tiles.to(self.device)).float().mean(0)
            shares.update({f: float(weights[self.tasks.index(f)]) >= 0.5 for f in ask})
        cube = prep.cube01[:, :prep.shape[1], :prep.shape[2]].numpy()
        facts: dict[str, object] = {}
        if shares.get("blur"):
            found = blind_blur(cube, noisy=obs.noisy(), max_windows=max_tiles, border=obs.blur_border,
                               sharp=self.cfg.sharp_width or 0.0, fit_scale=self.cfg.fit_width_scale)
            if found is not None:
                facts["blur_sigma"], border = found
                if obs.blur_border is None:  # said in the output, and the same for the estimate and consistency
                    facts["blur_border"] = border
        if shares.get("haze"):
            facts["haze"] = True
        if shares.get("lowlight"):
            exposure = estimate_exposure(cube)
            if exposure < 1.0:
                facts["exposure"] = exposure
        if not facts:
            return prep
        source = {**obs.source, **dict.fromkeys(facts, "estimated")}
        return prep.reobserved(obs.replaced(**facts, source=source))

    def restore_prepared(self, prep: PreparedCube, task: TaskSpec = "auto", *, samples: int = 1, seed: int = 0,
                         batch_size: int = 8, sampling: Sampling | None = None, guidance: Guidance = "dag",
                         cfg_scale: float = 1.5, refine: bool = True,
                         memo: DecodedTiles | None = None) -> RestoredSamples:
        """Restore a prepared cube's tiles in batches of ``batch_size``, blend them and make the result consistent
        with the observation (:meth:`PreparedCube.consistent`), once per sample. ``memo``: decoded tiles to reuse
        and keep (:meth:`forward`).

        Sample i decodes the tiles in order with one generator seeded ``seed + i``. ``"auto"`` weighs only the
        families the cube's observation leaves plausible (:meth:`resolve_task`).

        Raises:
            RestoreInputError: bad ``samples`` / ``batch_size``, greedy decoding with ``samples > 1``, or a seed
                outside [0, ``MAX_SEED`` − samples].
        """
        sampling = decoding(samples, batch_size, sampling)
        if not 0 <= seed <= MAX_SEED - samples:
            raise RestoreInputError(f"seed must be in [0, {MAX_SEED - samples}] for {samples} sample(s) (sample i is "
                                    f"seeded seed + i), got {seed}")
        task = self.resolve_task(prep, task)
        n = len(prep.coords)
        blended, weight_sum = [], torch.zeros(len(self.tasks), dtype=torch.float64)
        for s in range(samples):
            gen = torch.Generator(device=self.device).manual_seed(seed + s)
            blender = prep.blender()
            for i in range(0, n, batch_size):
                out, weights = self.forward(prep.tiles(i, i + batch_size), task, sampling, gen,
                                            estimate01=prep.estimate_tiles(i, i + batch_size), guidance=guidance,
                                            cfg_scale=cfg_scale, refine=refine, memo=memo)
                blender.add(prep.coords[i:i + batch_size], out)
                weight_sum += weights.double().sum(0)
            blended.append(prep.consistent(blender.result()))
        return RestoredSamples(torch.stack(blended), (weight_sum / (n * samples)).tolist())

    def restore(self, cube: np.ndarray | torch.Tensor | xarray.DataArray, task: TaskSpec = "auto", *,
                overlap: int | None = None, tile: int | None = None, batch_size: int = 8, samples: int = 1,
                seed: int = 0, sampling: Sampling | None = None, value_range: tuple[float, float] | None = None,
                nodata: float | None = None, observation: Observation | None = None,
                missing: np.ndarray | None = None, consistency: bool = True, guidance: Guidance = "dag",
                cfg_scale: float = 1.5, refine: bool = True) -> Restoration:
        """Restore one cube: :meth:`prepare` → :meth:`restore_prepared` → :func:`finish`.

        Args:
            cube: (C, H, W) in any units; C must equal the model's band count. Or an ``xarray.DataArray`` with the
                dims ``band``, ``y``, ``x`` in any order (:mod:`hsivar.io.dataarray`, e.g.
                ``open_dataarray(path)``): its ``nodata`` attribute and ``missing`` coordinate are used when
                ``nodata`` / ``missing`` are not given.
            task: ``"auto"``, a task name, or a {task: weight} mixture.
            overlap: tile overlap in pixels (default S/4); tile: must be None or S (the model's tile).
            batch_size: tiles per forward pass.
            samples: decodings to average; > 1 switches the default sampling to seeded top-p 0.9.
            seed: seed of the first sample (sample i uses seed + i).
            value_range: (min, max) of the units to normalise with; default the cube's own min/max.
            nodata: a value marking voxels that hold no data (kept as nodata in the output).
            observation: what is known of how the cube was observed (a mask of unobserved entries, bad bands,
                a blur width, an sr scale), merged over what the cube shows; see
                :class:`~hsivar.degrade.observation.Observation`.
            missing: (C, H, W) bool, entries the source marks as not observed, whatever their values — for a
                file, ``read_cube(path)[1].missing`` (its bad band list and mask, :mod:`hsivar.io.masks`):
                ``cube, meta = read_cube(path); restorer.restore(cube, nodata=meta.nodata, missing=meta.missing)``.
                They are synthesised; ``Restoration.kept`` says which entries hold the input's values. Write the
                output with ``dataclasses.replace(meta, missing=None)``: every entry holds a value now.
            consistency: keep exactly observed entries and back-project onto the observation (default).
        Returns:
            :class:`Restoration` with the cube (C, H, W) float32 in the input's units. For a DataArray input its
            ``cube`` and ``std`` (when present) are DataArrays float32 in the input's units with the input's dims
            order, coords and attrs, less the ``missing`` coordinate (every entry holds a value now), so
            ``write_cube(path, *to_cube(out.cube))`` writes it; ``kept`` stays a (C, H, W) bool array.
        Raises:
            RestoreInputError: wrong rank or band count, empty or non-finite cube, bad options, a ``missing`` mask
                of the wrong shape; :class:`NothingToRestore` when nodata and ``missing`` leave nothing observed.
            CubeError: a DataArray without exactly the dims band / y / x.
        """
        array = cube if type(cube).__module__.startswith("xarray.") else None  # a DataArray: DataArrays back
        if array is not None:
            from hsivar.io.dataarray import to_cube

            cube, meta = to_cube(array)
            nodata = meta.nodata if nodata is None else nodata
            missing = meta.missing if missing is None else missing
        t0 = time.perf_counter()
        overlap = resolve_overlap(self.tile, tile, overlap)
        decoding(samples, batch_size, sampling)  # option errors before any work
        prep = self.prepare(cube, overlap, nodata=nodata, value_range=value_range, observation=observation,
                            missing=missing, consistency=consistency)
        prep = self.observe(prep, task)
        out = self.restore_prepared(prep, task, samples=samples, seed=seed, batch_size=batch_size,
                                    sampling=sampling, guidance=guidance, cfg_scale=cfg_scale, refine=refine)
        mean, std = self.finish(prep, out)
        if array is not None:
            from hsivar.io.dataarray import with_cube

            mean, std = with_cube(array, mean), None if std is None else with_cube(array, std).rename("std")
        return Restoration(cube=mean, std=std, task_weights=dict(zip(self.tasks, out.task_weights)),
                           tiles=len(prep.coords), seconds=time.perf_counter() - t0, kept=prep.kept,
                           observation=prep.observation.summary() if prep.observation is not None else None,
                           std_calibrated=self.calibrated)
