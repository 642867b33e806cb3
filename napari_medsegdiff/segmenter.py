"""The Segmenter facade: load a model once, then segment slices as an ensemble.

Design for speed (see BENCHMARKS.md):
* the image/condition branch runs **once per slice** and is reused for every denoising step
  and every ensemble member;
* members x slices run as rows of one batch, in chunks whose size is measured per device;
* row (slice s, member m) draws its noise from its own generator seeded from (seed, m), so
  results do not depend on the chunking nor on which other slices are in the run;
* slices without tissue (``SamplerConfig.skip_empty``) are not sampled: they come back as
  background with zero variance and ``SliceResult.skipped`` set;
* a 2.5-D model (``context`` k > 0) gets each slice with its k neighbours on each side.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_medsegdiff.checkpoints import ModelInfo, load_model, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.cpu_share import CpuShare
from napari_medsegdiff.devices import autocast, choose_device, is_out_of_memory, released_memory
from napari_medsegdiff.diffusion.sampling import denoise_loop, initial_noise, make_scheduler
from napari_medsegdiff.ensemble import fuse, member_probabilities
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.preprocessing import (
    Canvas,
    foreground_slices,
    normalize_intensity,
    resize_probabilities,
    resize_slices,
    square_canvas,
    with_context,
)
from napari_medsegdiff.progress import CancelToken, EtaClock, Progress, ProgressCallback, check
from napari_medsegdiff.seeds import member_seed

#: Chunk sizes (rows per denoise) tried on a CPU, and how often each is timed.
CPU_CHUNKS = (1, 2, 4, 6)
CPU_ROUNDS = 3
#: A slice is sampled when at least this fraction of its pixels is above background.
TISSUE_FRACTION = 0.001


@dataclass
class SliceResult:
    """One finished slice. ``probability`` is (K', H, W): K'=1 foreground prob for binary."""

    index: int
    mask: np.ndarray  # (H, W) uint8 labels
    probability: np.ndarray  # (K', H, W) float32
    variance: np.ndarray  # (H, W) float32
    entropy: np.ndarray | None = None  # (H, W) float32
    members: np.ndarray | None = None  # (M, K, H, W) float32 member probabilities
    skipped: bool = False  # no tissue: not sampled, background with zero variance

    @property
    def foreground(self) -> np.ndarray:
        """P(any label > 0), (H, W)."""
        if self.probability.shape[0] == 1:
            return self.probability[0]
        return 1.0 - self.probability[0]


def parse_slices(
    spec: str | Sequence[int] | slice | None, depth: int, argument: str = "slices"
) -> list[int]:
    """``None`` -> all; ``'a:b'`` half-open; ``'a,b,c'``; a slice or list of ints."""
    if spec is None:
        return list(range(depth))
    if isinstance(spec, slice):
        return list(range(depth))[spec]
    if isinstance(spec, str):
        text = spec.strip()
        try:
            if ":" in text:
                start_s, stop_s = text.split(":", 1)
                start = int(start_s) if start_s.strip() else 0
                stop = int(stop_s) if stop_s.strip() else depth
                if start < 0 or stop > depth or start >= stop:
                    raise InputError(
                        f"slices: range {text!r} is empty or outside 0:{depth} (half-open)",
                        argument=argument,
                    )
                return list(range(start, stop))
            indices = [int(part) for part in text.split(",") if part.strip()]
        except InputError:  # a ValueError too: keep its message
            raise
        except ValueError:
            raise InputError(
                f"slices: expected START:STOP or a,b,c with integers, got {text!r}",
                argument=argument,
            ) from None
    else:
        indices = [int(i) for i in spec]
    bad = [i for i in indices if not 0 <= i < depth]
    if bad:
        raise InputError(
            f"slice(s) {bad[:5]} outside the volume's 0..{depth - 1}", argument=argument
        )
    if not indices:
        raise InputError("no slices selected", argument=argument)
    return sorted(set(indices))


class Segmenter:
    """A loaded model ready to segment slices, volumes and 2-D images."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: torch.device) -> None:
        self.model = model
        self.info = info
        self.config = info.config
        self.device = device
        self._chunk_cache: dict[tuple[int, int], int] = {}

    @classmethod
    def load(
        cls, model: str | Path | None = None, device: str | torch.device = "auto"
    ) -> Segmenter:
        """Load the shipped default (``None``), a model folder or a store version."""
        dev = choose_device(device)
        net, info = load_model(resolve_model(model), dev)
        return cls(net, info, dev)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def path(self) -> Path:
        return self.info.path

    # ------------------------------------------------------------------ inputs
    def prepare(
        self, data: np.ndarray, *, normalize: bool = True, window: tuple[float, float] | None = None
    ) -> np.ndarray:
        """Volume (z, y, x[, c]) -> normalised float32 (z, c, y, x) model input."""
        arr = np.asarray(data)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise InputError(f"image: expected (z, y, x) or (z, y, x, c), got shape {arr.shape}")
        self.check_channels(arr.shape[-1])
        if normalize:
            method = "ct" if window is not None else "percentile"
            arr = normalize_intensity(arr, method=method, window=window)
        return np.ascontiguousarray(np.moveaxis(arr.astype(np.float32, copy=False), -1, 1))

    def check_channels(self, channels: int, source: str = "image") -> None:
        """Refuse an input with another channel count than the model's, naming ``source``."""
        if channels != self.config.in_channels:
            raise InputError(
                f"{source}: {channels} channel(s), but model {self.name!r} expects "
                f"{self.config.in_channels} (one 3-D file or layer per channel)"
            )

    def canvas(self, height: int, width: int) -> Canvas:
        """Where an (height, width) slice sits in the model's square input (as in training)."""
        return square_canvas(height, width, self.config.image_size)

    def model_input(
        self, images: np.ndarray, indices: Sequence[int], canvas: Canvas
    ) -> torch.Tensor:
        """Prepared slices (z, C, H, W) at ``indices`` with their context, placed on the
        canvas: (len(indices), input channels, S, S) on the model's device."""
        stacked = with_context(images, indices, self.config.context)
        content = torch.as_tensor(resize_slices(stacked, (canvas.height, canvas.width)))
        return canvas.place(content).to(self.device)

    # ---------------------------------------------------------------- sampling
    def segment_volume(
        self,
        data: np.ndarray,
        *,
        slices: str | Sequence[int] | slice | None = None,
        sampler: SamplerConfig | None = None,
        window: tuple[float, float] | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[SliceResult]:
        """Segment a volume (z, y, x[, c]) slice by slice (axis 0), yielding as slices finish.

        The volume is normalised once as a whole; ``slices`` picks indices along axis 0.
        """
        arr = np.asarray(getattr(data, "data", data))
        if arr.ndim not in (3, 4):
            raise InputError(
                f"image: a volume needs 3 or 4 dimensions (z, y, x[, c]), got shape {arr.shape}"
            )
        indices = parse_slices(slices, arr.shape[0])
        images = self.prepare(arr, window=window)
        yield from self.segment_slices(
            images, indices, sampler=sampler, on_progress=on_progress, cancel=cancel
        )

    def segment_image(
        self,
        image: np.ndarray,
        *,
        sampler: SamplerConfig | None = None,
        cancel: CancelToken | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SliceResult:
        """Segment one 2-D image (H, W) or (H, W, C), e.g. an RGB dermoscopy photo."""
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise InputError(f"image: expected a 2-D image (H, W[, C]), got shape {arr.shape}")
        images = self.prepare(arr[None])
        results = list(
            self.segment_slices(
                images, [0], sampler=sampler, cancel=cancel, on_progress=on_progress
            )
        )
        return results[0]

    def segment_slices(
        self,
        images: np.ndarray,
        indices: Sequence[int],
        *,
        sampler: SamplerConfig | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[SliceResult]:
        """Core loop over prepared images (z, C, H, W); yields one result per index in order."""
        cfg = sampler or SamplerConfig()
        height, width = images.shape[-2:]
        canvas = self.canvas(height, width)
        members = cfg.ensemble
        empty = self.empty_slices(images, indices) if cfg.skip_empty else set()
        rows = [(s, m) for s in indices if s not in empty for m in range(members)]
        chunk = cfg.chunk_size or self.auto_chunk_size(*canvas.shape)
        clock = EtaClock(len(indices))
        order = list(indices)
        emitted = 0  # results yielded, in the order of ``indices``
        finished: dict[int, SliceResult] = {}
        pending: dict[int, list[torch.Tensor | None]] = {}
        cond_cache: tuple[tuple[int, ...], object] | None = None
        pos = 0
        full = (height, width)
        share = CpuShare(self.device)  # fewer threads while other processes are busy
        if on_progress:
            on_progress(Progress(0, len(indices), "starting", None))
        try:
            while emitted < len(order):
                while emitted < len(order) and (order[emitted] in empty | finished.keys()):
                    s = order[emitted]
                    result = finished.pop(s, None) or self._empty_result(s, full, members)
                    emitted += 1
                    if on_progress:
                        note = " (no tissue: skipped)" if result.skipped else ""
                        on_progress(
                            Progress(emitted, len(order), f"slice {s}{note}", clock.eta(emitted))
                        )
                    yield result
                if pos >= len(rows):
                    break
                part = rows[pos : pos + chunk]
                share.adjust()
                try:
                    x0, cond_cache = self._sample_rows(
                        part,
                        images,
                        canvas,
                        cfg,
                        cond_cache,
                        cancel,
                        on_progress,
                        emitted,
                        len(indices),
                    )
                except RuntimeError as exc:
                    if not is_out_of_memory(exc) or chunk == 1:
                        raise
                    with released_memory(self.device):
                        chunk = max(1, chunk // 2)
                        self._chunk_cache[canvas.shape] = chunk
                        cond_cache = None
                    continue
                pos += len(part)
                for (s, m), row in zip(part, x0):
                    pending.setdefault(s, [None] * members)[m] = row
                for s in [s for s in list(pending) if all(r is not None for r in pending[s])]:
                    stack = torch.stack(pending.pop(s)).float().cpu()  # type: ignore[arg-type]
                    finished[s] = self._fuse(s, canvas.crop(stack), (height, width), cfg)
        finally:
            share.restore()

    def refine_slice(
        self,
        images: np.ndarray,
        index: int,
        strokes: np.ndarray,
        *,
        sampler: SamplerConfig | None = None,
        cancel: CancelToken | None = None,
    ) -> SliceResult:
        """Re-sample slice ``index`` of prepared ``images`` (z, C, H, W) with the user's
        strokes held as known (RePaint-style inpainting, no training).

        ``strokes``: (H, W) int, -1 where free, else the label painted there. The result's
        mask equals the strokes on every painted pixel; its variance there is 0.
        """
        cfg = sampler or SamplerConfig()
        height, width = images.shape[-2:]
        strokes = np.asarray(strokes)
        if strokes.shape != (height, width):
            raise InputError(
                f"strokes: shape {strokes.shape} differs from the slice's {height, width}"
            )
        k = self.config.mask_channels
        classes = max(2, k)
        if strokes.max(initial=-1) >= classes:
            raise InputError(
                f"strokes: label {strokes.max()} is not one of the model's {classes} classes"
            )
        canvas = self.canvas(height, width)
        where = (strokes >= 0).astype(np.float32)[None, None]
        onehot = np.stack([(strokes == c) for c in range(classes)]).astype(np.float32)[None]
        if k == 1:
            onehot = onehot[:, 1:]
        size = (canvas.height, canvas.width)
        # (1, K, S, S) mask values in [-1, 1]; the padding is never known
        x0 = canvas.place(torch.as_tensor(resize_probabilities(onehot, size)) * 2 - 1, -1.0)
        known_at = canvas.place(torch.as_tensor(resize_slices(where, size)), 0.0) >= 0.5
        members = cfg.ensemble
        part = [(int(index), m) for m in range(members)]
        known = (
            x0.expand(members, -1, -1, -1).to(self.device),
            known_at.expand(members, -1, -1, -1).to(self.device),
        )
        rows, _ = self._sample_rows(part, images, canvas, cfg, None, cancel, None, 0, 1, known)
        result = self._fuse(int(index), canvas.crop(rows.float().cpu()), (height, width), cfg)
        painted = strokes >= 0
        result.mask[painted] = strokes[painted]
        result.variance[painted] = 0.0
        return result

    def empty_slices(self, images: np.ndarray, indices: Sequence[int]) -> set[int]:
        """Indices whose prepared slice (C, H, W) holds less than ``TISSUE_FRACTION`` tissue
        or no contrast at all (every pixel the same value, e.g. a blank or constant scan)."""
        empty = set()
        for i in indices:
            image = np.asarray(images[int(i) : int(i) + 1])
            uniform = bool(np.all(image == image.reshape(-1)[0]))
            if uniform or not foreground_slices(
                np.moveaxis(image, 1, -1), TISSUE_FRACTION, normalized=True
            ):
                empty.add(int(i))
        return empty

    def _empty_result(self, index: int, size: tuple[int, int], members: int) -> SliceResult:
        """Background, certain: what a slice without tissue gets without sampling."""
        k = self.config.mask_channels
        probability = np.zeros((k, *size), np.float32)
        if k > 1:
            probability[0] = 1.0
        zeros = np.zeros(size, np.float32)
        return SliceResult(
            index,
            np.zeros(size, np.uint8),
            probability,
            zeros,
            zeros.copy(),
            np.repeat(probability[None], members, axis=0),
            skipped=True,
        )

    def _sample_rows(
        self, part, images, canvas, cfg, cond_cache, cancel, on_progress, done, total, known=None
    ):
        check(cancel)
        unique = tuple(sorted({s for s, _ in part}))
        if cond_cache is not None and set(unique) <= set(cond_cache[0]):
            slice_ids, cond = cond_cache
        else:
            batch = self.model_input(images, unique, canvas)
            with torch.inference_mode(), autocast(self.device):
                cond = self.model.encode_condition(batch)
            slice_ids = unique
        where = {s: i for i, s in enumerate(slice_ids)}
        idx = torch.tensor([where[s] for s, _ in part], device=self.device)
        row_cond = cond.index(idx)
        generators = [torch.Generator().manual_seed(member_seed(cfg.seed, m)) for _, m in part]
        shape = (self.config.mask_channels, *canvas.shape)
        x = initial_noise(shape, generators, self.device)
        scheduler = make_scheduler(cfg.sampler, self.config)

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(self.device):
                return self.model.denoise(x_t, t, row_cond)

        def on_step(step: int, steps: int) -> None:
            if on_progress:
                on_progress(
                    Progress(
                        done, total, f"denoising step {step}/{steps}", None, step=step, steps=steps
                    )
                )

        with torch.inference_mode():
            x0 = denoise_loop(
                denoise, x, scheduler, cfg.steps, generators, cancel, on_step, known=known
            )
        return x0, (slice_ids, cond)

    def _fuse(
        self, index: int, x0: torch.Tensor, size: tuple[int, int], cfg: SamplerConfig
    ) -> SliceResult:
        probs = member_probabilities(x0.numpy())  # (M, K, h, w)
        probs = np.asarray(resize_probabilities(probs, size), dtype=np.float32)
        fused = fuse(probs, cfg.fusion, cfg.threshold)
        return SliceResult(
            index,
            fused.mask.astype(np.uint8),
            fused.probability,
            fused.variance,
            fused.entropy,
            probs,
        )

    # ------------------------------------------------------------ chunk size
    def auto_chunk_size(self, height: int, width: int) -> int:
        """Rows per forward, measured once per size: the best throughput up to a budget."""
        key = (height, width)
        if key in self._chunk_cache:
            return self._chunk_cache[key]
        if self.device.type != "cpu":
            # Accelerators: large batches; out-of-memory halves the chunk at run time.
            pixels = height * width
            chunk = max(1, min(64, (256 * 256 * 32) // max(1, pixels)))
        else:
            chunk = self._measure_cpu_chunk(height, width)
        self._chunk_cache[key] = chunk
        return chunk

    def _measure_cpu_chunk(self, height: int, width: int) -> int:
        """Rows per denoise with the best time per row, from ``CPU_CHUNKS``.

        Each size is timed ``CPU_ROUNDS`` times, interleaved, and its fastest time counts:
        another process's burst only ever adds time, so the minimum is the machine's and not
        the moment's. A larger chunk must win by 10 % (smaller chunks report progress and
        stop on cancel sooner).
        """
        k = self.config.mask_channels
        image = torch.zeros(1, self.config.input_channels, height, width)
        best_time = {batch: float("inf") for batch in CPU_CHUNKS}
        with torch.inference_mode():
            cond = self.model.encode_condition(image)
            rows = {
                b: (
                    torch.zeros(b, k, height, width),
                    torch.full((b,), 500, dtype=torch.long),
                    cond.index(torch.zeros(b, dtype=torch.long)),
                )
                for b in CPU_CHUNKS
            }
            for x, t, c in rows.values():
                self.model.denoise(x, t, c)  # warm-up
            for _ in range(CPU_ROUNDS):
                for batch, (x, t, c) in rows.items():
                    start = time.perf_counter()
                    self.model.denoise(x, t, c)
                    best_time[batch] = min(best_time[batch], time.perf_counter() - start)
        best, best_rate = 1, float("inf")
        for batch in CPU_CHUNKS:
            per_row = best_time[batch] / batch
            if per_row < best_rate * 0.9:
                best, best_rate = batch, per_row
        return best


def assemble(
    results: Sequence[SliceResult] | Iterator[SliceResult],
    shape: tuple[int, int, int],
    *,
    variance: bool = True,
    probability: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Stack slice results into (mask uint8, variance float32, foreground prob float32) volumes.

    Slices not present stay 0. A map not asked for (``variance`` / ``probability`` False)
    is not allocated and comes back as None (a float32 volume less in memory).
    """
    mask = np.zeros(shape, dtype=np.uint8)
    var = np.zeros(shape, dtype=np.float32) if variance else None
    prob = np.zeros(shape, dtype=np.float32) if probability else None
    for r in results:
        mask[r.index] = r.mask
        if var is not None:
            var[r.index] = r.variance
        if prob is not None:
            prob[r.index] = r.foreground
    return mask, var, prob
