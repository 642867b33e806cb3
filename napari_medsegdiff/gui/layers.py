"""Layer helpers for the docks: inputs from Image layers, result layers, the kept proposal.

The mask Labels layer carries in its ``metadata``:

* ``medsegdiff_geometry`` (copied from the image) so export lines up with the scan;
* ``medsegdiff_proposal``: the model's raw mask, same shape as the labels; slices where
  the labels differ from it are the user's corrections;
* ``medsegdiff_segmented`` / ``medsegdiff_reviewed``: sorted slice indices;
* ``medsegdiff_model``: the model folder that made the proposal; ``medsegdiff_image``:
  the source image layer's name (a fallback); ``medsegdiff_source``: the source image's
  link id (``medsegdiff_link`` in the image's metadata), so the docks find the results of
  an image by identity, whatever either layer is renamed to.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.finetune import corrected_slices
from napari_medsegdiff.review import boundary_values, limits_from_values

PROPOSAL = "medsegdiff_proposal"
SEGMENTED = "medsegdiff_segmented"
REVIEWED = "medsegdiff_reviewed"
MODEL = "medsegdiff_model"
SOURCE = "medsegdiff_image"
ROLE = "medsegdiff_role"
VOLUMES = "volumes"  # set by the reader on a (t, z, y, x) series layer: its volume count
VOLUME_PICKS = "medsegdiff_volumes"  # on a mask: the series volumes used as channels
LINK = "medsegdiff_link"
SOURCE_LINK = "medsegdiff_source"
_DROP_KEYS = ("channel", VOLUMES, PROPOSAL, SEGMENTED, REVIEWED, ROLE, LINK, SOURCE_LINK)
# The mask's own look (the sample's reference labels keep napari's default colours).
MASK_COLORS = {
    None: (1.0, 0.3, 0.9, 1.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.0, 0.85, 1.0, 1.0),
    2: (1.0, 0.8, 0.0, 1.0),
    3: (0.3, 1.0, 0.3, 1.0),
    4: (1.0, 0.35, 0.35, 1.0),
}
MASK_OPACITY = 0.45
# Uncertainty: transparent where the members agree, opaque orange -> red where they do not.
UNCERTAINTY_COLORS = [[1.0, 0.9, 0.0, 0.0], [1.0, 0.55, 0.0, 0.75], [1.0, 0.0, 0.0, 1.0]]
_CHANNEL_TAG = re.compile(r"\s*\[c\d+\]$")


def is_result_layer(layer: Any) -> bool:
    """True for mask/variance layers this plugin made (kept out of the image inputs)."""
    return isinstance(getattr(layer, "metadata", None), dict) and ROLE in layer.metadata


def is_volume_series(layer: Any) -> bool:
    """True for a (t, z, y, x) layer of a 4-D file opened with a volume slider (fMRI, DWI)."""
    meta = getattr(layer, "metadata", None)
    return (
        isinstance(meta, dict)
        and isinstance(meta.get(VOLUMES), int)
        and not getattr(layer, "rgb", False)
        and np.ndim(layer.data) == 4
    )


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape of an Image layer without its RGB(A) axis or a series' volume axis."""
    shape = tuple(layer.data.shape)
    if is_volume_series(layer):
        return shape[1:]
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def parse_volumes(text: str, count: int) -> list[int]:
    """``"0,3"`` -> [0, 3]: volumes of a series used as the model's channels."""
    try:
        picks = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"volumes: expected indices like 0,3; got {text!r}") from None
    if not picks or any(not 0 <= v < count for v in picks):
        raise InputError(f"volumes: need indices in 0..{count - 1}, got {text!r}")
    return picks


def shown_volume(viewer: Any, layer: Any) -> int:
    """The volume index a series layer shows under the viewer's slider."""
    point = layer.world_to_data(viewer.dims.point)
    return int(np.clip(round(float(point[0])), 0, layer.data.shape[0] - 1))


def result_names(image_name: str) -> tuple[str, str]:
    """(mask, variance) layer names for an image (a ``[cN]`` channel tag is dropped)."""
    base = _CHANNEL_TAG.sub("", image_name) or image_name
    return f"{base} mask", f"{base} variance"


def stack_channels(layers: Sequence[Any], volumes: Sequence[int] = (0,)) -> np.ndarray:
    """Image layers -> (z, y, x) or (z, y, x, c); all must share shape and geometry.

    A series layer (:func:`is_volume_series`) contributes its ``volumes`` as channels.
    """
    if not layers:
        raise InputError("no image layer: open a scan (File > Open) or load the sample data")
    first = layers[0]
    arrays = []
    for layer in layers:
        if spatial_shape(layer) != spatial_shape(first) or layer.rgb != first.rgb:
            raise InputError(
                f"channel {layer.name!r} has shape {layer.data.shape}, but {first.name!r} has "
                f"{first.data.shape}: channels must be co-registered volumes of one shape"
            )
        if not _same_geometry(first, layer):
            raise InputError(
                f"channel {layer.name!r} is not in the same space (geometry) as {first.name!r}"
            )
        if is_volume_series(layer):
            arrays.extend(np.asarray(layer.data[v]) for v in volumes)
        else:
            arrays.append(np.asarray(layer.data))
    if len(arrays) == 1:
        return arrays[0]
    if first.rgb:
        raise InputError("RGB images cannot be combined with other channels")
    return np.stack(arrays, axis=-1)


def _same_geometry(a: Any, b: Any) -> bool:
    ga, gb = a.metadata.get("medsegdiff_geometry"), b.metadata.get("medsegdiff_geometry")
    if isinstance(ga, dict) and isinstance(gb, dict):
        return np.allclose(ga["affine"], gb["affine"], atol=1e-3) and list(
            ga["source_shape"]
        ) == list(gb["source_shape"])
    return np.allclose(a.scale, b.scale) and np.allclose(a.translate, b.translate)


def layer_kwargs_like(image: Any) -> dict[str, Any]:
    """scale / translate / affine and a metadata copy so results overlay ``image``."""
    ndim = len(spatial_shape(image))
    kwargs: dict[str, Any] = {
        "scale": tuple(image.scale)[-ndim:],
        "translate": tuple(image.translate)[-ndim:],
        "metadata": {k: copy.deepcopy(v) for k, v in image.metadata.items() if k not in _DROP_KEYS},
    }
    matrix = np.asarray(image.affine.affine_matrix)
    if is_volume_series(image):  # block-diagonal: the volume axis is not spatial
        matrix = matrix[1:, 1:]
    if matrix.shape == (ndim + 1, ndim + 1) and not np.allclose(matrix, np.eye(ndim + 1)):
        kwargs["affine"] = matrix
    return kwargs


def image_link(image: Any) -> str:
    """The image layer's link id (made on first use, kept in its metadata)."""
    link = image.metadata.get(LINK)
    if not isinstance(link, str):
        link = uuid.uuid4().hex
        image.metadata[LINK] = link
    return link


def find_result(viewer: Any, image: Any, role: str) -> Any | None:
    """The ``role`` ("mask" / "variance") layer made for ``image``, found by identity.

    Layers made before links existed (or by hand, with the role set) are found by the
    ``"<image> mask"`` name when no linked layer exists.
    """
    shape = spatial_shape(image)
    link = image.metadata.get(LINK)
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {})
        if meta.get(ROLE) == role and link is not None and meta.get(SOURCE_LINK) == link:
            if tuple(layer.data.shape) == tuple(shape):
                return layer
    name = result_names(image.name)[0 if role == "mask" else 1]
    layer = find_layer(viewer, name, shape)
    if layer is not None and layer.metadata.get(SOURCE_LINK) not in (None, link):
        return None  # named like ours but made for another image
    return layer


def source_image(viewer: Any, result: Any) -> Any | None:
    """The image layer a result layer was made from (by link, else by recorded name)."""
    link, name = result.metadata.get(SOURCE_LINK), result.metadata.get(SOURCE)
    images = [lay for lay in viewer.layers if lay is not result and hasattr(lay, "rgb")]
    for layer in images:
        if link is not None and layer.metadata.get(LINK) == link:
            return layer
    for layer in images:
        if name and layer.name == name and not is_result_layer(layer):
            return layer
    return None


def set_class_names(layer: Any, names: Sequence[str]) -> None:
    """Label value -> class name as layer features: hovering shows ``class: grey matter``."""
    layer.features = {"index": np.arange(len(names)), "class": list(names)}


def model_class_names(model_path: Any) -> list[str]:
    """Class names from a model's config.json (``class_names`` / ``classes``), else "class N"."""
    from napari_medsegdiff.checkpoints import class_names, read_model_info

    info = read_model_info(model_path)
    return class_names(info.meta, info.config.num_classes)


def class_legend(mask: Any) -> list[tuple[str, tuple[float, ...]]]:
    """``[(class name, rgba), ...]`` for the mask's foreground classes (from its features)."""
    features = mask.features
    if "class" not in features or "index" not in features:
        return []
    return [
        (str(name), tuple(float(c) for c in mask.colormap.map(int(value))))
        for value, name in zip(features["index"], features["class"], strict=False)
        if int(value) != 0
    ]


def find_layer(viewer: Any, name: str, shape: tuple[int, ...] | None = None) -> Any | None:
    """The layer called ``name`` (of ``shape`` when given), else None."""
    for layer in viewer.layers:
        if layer.name == name and (shape is None or tuple(layer.data.shape) == tuple(shape)):
            return layer
    return None


def ensure_result_layers(viewer: Any, image: Any, model_path: str) -> tuple[Any, Any]:
    """Get or create the mask Labels and variance Image layers linked to ``image``.

    New layers are named ``"<image> mask"`` / ``"<image> variance"``; existing ones are
    found by identity (see :func:`find_result`), so renaming them keeps the link.
    """
    from napari.utils import Colormap
    from napari.utils.colormaps import DirectLabelColormap

    shape = spatial_shape(image)
    mask_name, var_name = result_names(image.name)
    link = image_link(image)
    mask = find_result(viewer, image, "mask")
    ours = {MODEL: str(model_path), SOURCE: image.name, SOURCE_LINK: link}
    if mask is None:  # metadata complete before the layer is inserted (docks react to it)
        kwargs = layer_kwargs_like(image)
        kwargs["metadata"].update({ROLE: "mask", PROPOSAL: np.zeros(shape, np.uint8), **ours})
        mask = viewer.add_labels(
            np.zeros(shape, np.uint8),
            name=mask_name,
            opacity=MASK_OPACITY,
            colormap=DirectLabelColormap(color_dict=MASK_COLORS),
            **kwargs,
        )
    meta = mask.metadata
    proposal = meta.get(PROPOSAL)
    if not isinstance(proposal, np.ndarray) or proposal.shape != shape:
        meta[PROPOSAL] = np.zeros(shape, np.uint8)
    meta.setdefault(SEGMENTED, [])
    meta.setdefault(REVIEWED, [])
    meta.update(ours)
    try:
        set_class_names(mask, model_class_names(model_path))
    except Exception:  # names are a courtesy; the model itself is checked elsewhere
        pass
    variance = find_result(viewer, image, "variance")
    if variance is None:
        kwargs = layer_kwargs_like(image)
        kwargs["metadata"].update({ROLE: "variance", SOURCE_LINK: link})
        variance = viewer.add_image(
            np.zeros(shape, np.float32),
            name=var_name,
            colormap=Colormap(UNCERTAINTY_COLORS, name="medsegdiff uncertainty"),
            blending="translucent",
            opacity=0.9,
            contrast_limits=(0.0, 1e-3),
            **kwargs,
        )
    variance.metadata[SOURCE_LINK] = link
    return mask, variance


def labels_of(layer: Any) -> np.ndarray:
    """The Labels layer data as an array (first level of a multiscale)."""
    data = layer.data
    return np.asarray(data[0] if isinstance(data, list) else data)


def as_volume(arr: np.ndarray) -> np.ndarray:
    """A 2-D slice is a one-slice volume for the per-slice bookkeeping."""
    return arr[None] if arr.ndim == 2 else arr


def corrected(layer: Any) -> list[int]:
    """Slices whose labels differ from the kept proposal (all labelled slices if none)."""
    labels = as_volume(labels_of(layer))
    proposal = layer.metadata.get(PROPOSAL)
    if not isinstance(proposal, np.ndarray) or as_volume(proposal).shape != labels.shape:
        proposal = np.zeros_like(labels)
    return corrected_slices(labels, as_volume(proposal))


def reviewed(layer: Any) -> list[int]:
    return sorted(int(s) for s in layer.metadata.get(REVIEWED, []))


def mark_reviewed(layer: Any, index: int) -> list[int]:
    """Add ``index`` to the layer's reviewed slices; return the new sorted list."""
    layer.metadata[REVIEWED] = sorted({*reviewed(layer), int(index)})
    return layer.metadata[REVIEWED]


def slice_is_corrected(layer: Any, index: int) -> bool:
    labels = as_volume(labels_of(layer))
    proposal = layer.metadata.get(PROPOSAL)
    if not isinstance(proposal, np.ndarray):
        return bool(labels[index].any())
    return not np.array_equal(labels[index], as_volume(proposal)[index])


class ResultWriter:
    """Buffers finished slices and writes them into the layers in one refresh per flush.

    With ``keep_corrections``, a slice the user changed (or marked reviewed) is left
    untouched, even if it was edited while the run was going.
    """

    def __init__(self, mask: Any, variance: Any, keep_corrections: bool = True) -> None:
        self.mask, self.variance = mask, variance
        self.keep = keep_corrections
        self.top_only = False
        # boundary variance of the slices written by this run: display limits while it runs
        # without re-scanning the volume (the dock recomputes over all slices at the end)
        self.edge_values: dict[int, np.ndarray] = {}
        self.pending: list[Any] = []
        self.written: list[int] = []
        self.skipped: list[int] = []

    def add(self, result: Any) -> None:
        self.pending.append(result)

    def flush(self) -> int:
        """Write pending results; returns how many slices were written."""
        if not self.pending:
            return 0
        batch, self.pending = self.pending, []
        labels = as_volume(labels_of(self.mask))
        var = as_volume(np.asarray(self.variance.data))
        meta = self.mask.metadata
        proposal = as_volume(meta[PROPOSAL])
        done = set(meta.get(SEGMENTED, []))
        protected = set(reviewed(self.mask)) if self.keep else set()
        wrote = 0
        for result in batch:
            z = int(result.index) if labels.shape[0] > 1 else 0
            if self.keep and (z in protected or slice_is_corrected(self.mask, z)):
                self.skipped.append(z)
                continue
            labels[z] = result.mask
            proposal[z] = result.mask
            var[z] = result.variance
            self.edge_values[z] = boundary_values(result.variance, result.mask)
            done.add(z)
            self.written.append(z)
            wrote += 1
        if wrote:
            meta[SEGMENTED] = sorted(done)
            if not self.keep:
                meta[REVIEWED] = sorted(set(reviewed(self.mask)) - set(self.written))
            values = np.concatenate(list(self.edge_values.values()))
            self.variance.contrast_limits = limits_from_values(values, self.top_only)
            self.mask.refresh()
            self.variance.refresh()
        return wrote


def current_index(viewer: Any, layer: Any) -> int:
    """The layer's axis-0 index under the viewer's current point (clipped)."""
    if layer.ndim < 3 and len(spatial_shape(layer)) < 3:
        return 0
    point = layer.world_to_data(viewer.dims.point)
    depth = spatial_shape(layer)[0]
    lead = 1 if is_volume_series(layer) else 0
    return int(np.clip(round(float(point[lead])), 0, depth - 1))


def jump_to_slice(viewer: Any, layer: Any, index: int) -> None:
    """Move the viewer so ``layer``'s axis-0 slice ``index`` is shown."""
    shape = spatial_shape(layer)
    if len(shape) < 3:
        return
    centre = [index, (shape[1] - 1) / 2, (shape[2] - 1) / 2]
    lead = 1 if is_volume_series(layer) else 0
    if lead:
        centre = [shown_volume(viewer, layer), *centre]
    world = layer.data_to_world(centre)
    axis = viewer.dims.ndim - layer.ndim + lead
    viewer.dims.set_point(axis, float(world[lead]))
