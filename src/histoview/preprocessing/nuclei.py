"""Nuclei instance segmentation in RGB H&E images, with per-nucleus morphology.

The nuclei are the nodes of the cell graph of Sureka et al., 2020 ("Visualization for
histopathology images using graph convolutional neural networks", arXiv:2006.09464), who
found them with a U-Net. Here the default detector is classical and needs no weights:

1. colour deconvolution (:func:`skimage.color.rgb2hed`), keep the haematoxylin channel;
2. Gaussian smoothing, subtraction of the slowly varying background (grey opening larger
   than a nucleus), Otsu threshold (scaled, with an absolute floor);
3. morphological opening, filling of small holes (vesicular nuclei), removal of specks;
4. seeds at the maxima of a scale-normalised Laplacian-of-Gaussian of the haematoxylin
   ("blob" centres, which separate touching nuclei better than the distance transform
   alone) plus a smaller distance-to-background term;
5. watershed of the negated seed map from those seeds inside the foreground;
6. area filtering.

Every size is given in micrometres and converted with the image's pixel size, so the same
defaults work at 40X (0.25 um/px), 20X (0.5 um/px) and coarser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage import color, feature, filters, measure, morphology, segmentation, transform

__all__ = ["FEATURE_NAMES", "Nuclei", "NucleiDetectorConfig", "detect_nuclei", "nucleus_features"]

FEATURE_NAMES: tuple[str, ...] = (
    "area_um2",
    "perimeter_um",
    "eccentricity",
    "solidity",
    "major_axis_um",
    "minor_axis_um",
    "orientation",
    "mean_hematoxylin",
    "mean_eosin",
    "std_hematoxylin",
    "circularity",
    "glcm_contrast",
    "glcm_homogeneity",
)
"""Morphology per nucleus. Lengths in um, areas in um^2, ``orientation`` in radians
(skimage convention, angle between the row axis and the major axis, in [-pi/2, pi/2]),
stain values are :func:`skimage.color.rgb2hed` optical densities, ``circularity`` is
4 pi area / perimeter^2, and the two GLCM features are computed on the haematoxylin
channel (see :func:`nucleus_features`)."""

_GLCM_LEVELS = 32
_H_MAX = float(color.rgb2hed(np.zeros((1, 1, 3), np.uint8))[0, 0, 0])  # H of a black pixel


@dataclass(frozen=True)
class NucleiDetectorConfig:
    """Parameters of the classical detector; every size is in micrometres.

    Attributes:
        smoothing_um: sigma of the Gaussian applied to the haematoxylin channel before
            thresholding (0 disables it).
        background_radius_um: half-size of the grey opening that estimates the local
            haematoxylin background (uneven staining, section thickness, vignetting), which
            is subtracted before thresholding ("rolling ball"); it must exceed the radius of
            the largest nuclei (~7.5 um), 0 disables the correction.
        threshold_scale: factor on the Otsu threshold of the smoothed haematoxylin; >1 keeps
            only the darker, more certainly nuclear pixels, <1 also takes pale (vesicular)
            nuclei and more cytoplasm.
        min_hematoxylin: absolute floor of the threshold (optical density above the local
            background), so that a tile without nuclei does not get its stroma split in
            two by Otsu.
        opening_radius_um: radius of the disc used for the morphological opening that cuts
            thin bridges and removes specks.
        fill_holes_um2: holes in the foreground smaller than this are filled (pale
            vesicular nuclei, nucleoli).
        blob_sigma_um: scale of the Laplacian of Gaussian used to place one seed per nucleus;
            a blob of radius r responds most at sigma = r / sqrt(2), and breast nuclei are
            about 5-6 um across (radius ~2.8 um), hence 2 um.
        min_distance_um: minimum distance between two seeds (two nuclei centres).
        distance_weight: weight of the distance to the background (in units of the blob
            radius sigma * sqrt(2)) added to the LoG response (normalised by its 95th
            percentile in the foreground) to form the seed and watershed map; 0 uses the
            LoG alone. The distance term favours one seed per compact blob.
        min_area_um2: nuclei smaller than this are dropped (debris, cut-off tips); the
            smallest annotated breast nuclei are ~5-8 um^2.
        max_area_um2: objects larger than this are dropped (gross merges, stain blotches);
            large tumour nuclei reach ~100-150 um^2.
    """

    smoothing_um: float = 0.5
    background_radius_um: float = 15.0
    threshold_scale: float = 1.0
    min_hematoxylin: float = 0.015
    opening_radius_um: float = 1.0
    fill_holes_um2: float = 20.0
    blob_sigma_um: float = 2.0
    min_distance_um: float = 2.5
    distance_weight: float = 0.5
    min_area_um2: float = 8.0
    max_area_um2: float = 200.0


@dataclass(frozen=True, eq=False)
class Nuclei:
    """Detected nuclei of one image.

    Attributes:
        labels: (H, W) int32 instance image, 0 background, nucleus ``i`` has label ``i + 1``.
        centroids: (N, 2) float64 (row, col) in pixels.
        outlines: N arrays (K_i, 2) float64 (row, col), closed polygons, first point not
            repeated.
        features: (N, F) float32 morphology, columns named by ``feature_names``.
        feature_names: names of the feature columns (:data:`FEATURE_NAMES`).
        pixel_size_um: pixel size of the image the nuclei were found in.
    """

    labels: np.ndarray
    centroids: np.ndarray
    outlines: tuple
    features: np.ndarray
    feature_names: tuple[str, ...]
    pixel_size_um: float

    def __len__(self) -> int:
        return int(self.centroids.shape[0])


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB view of ``image``; RGBA loses alpha."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(
            f"expected an RGB(A) image of shape (H, W, 3|4), got shape {image.shape}; "
            "grayscale images cannot be colour-deconvolved into haematoxylin and eosin"
        )
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(image, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _check_pixel_size(pixel_size_um: float) -> float:
    px = float(pixel_size_um)
    if not np.isfinite(px) or px <= 0:
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    return px


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Remove connected components of ``mask`` with fewer than ``min_px`` pixels."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def detect_nuclei(
    image: np.ndarray, pixel_size_um: float, config: NucleiDetectorConfig | None = None
) -> Nuclei:
    """Segment nuclei in an H&E image (classical pipeline of the module docstring).

    Args:
        image: (H, W, 3) uint8 RGB (RGBA accepted, alpha dropped; float in [0, 1] accepted).
        pixel_size_um: micrometres per pixel (MoNuSeg 40X: 0.2456, BACH: 0.42).
        config: detector parameters in micrometres; defaults to :class:`NucleiDetectorConfig`.

    Returns:
        :class:`Nuclei` with instance labels, centroids, outlines and morphology features,
        the nodes of the cell graph of Sureka et al., 2020.

    Raises:
        ValueError: for grayscale / wrongly shaped images or a non-positive pixel size.
    """
    rgb = _as_rgb(image)
    px = _check_pixel_size(pixel_size_um)
    cfg = config or NucleiDetectorConfig()
    hed = color.rgb2hed(rgb).astype(np.float32)
    labels = _segment(hed[..., 0], px, cfg)
    outlines = _outlines(labels)
    features, names = _features(hed, labels, px, outlines)
    return Nuclei(
        labels=labels,
        centroids=_centroids(labels),
        outlines=outlines,
        features=features,
        feature_names=names,
        pixel_size_um=px,
    )


def _segment(hema: np.ndarray, px: float, cfg: NucleiDetectorConfig) -> np.ndarray:
    """Instance labels (int32, sequential) from the haematoxylin optical density."""
    shape = hema.shape
    sigma = cfg.smoothing_um / px
    smooth = ndi.gaussian_filter(hema, sigma) if sigma > 0 else hema
    if cfg.background_radius_um > 0:
        smooth = smooth - _background(smooth, px, cfg.background_radius_um)
    if float(smooth.max()) - float(smooth.min()) < 1e-6:
        return np.zeros(shape, np.int32)
    thr = max(filters.threshold_otsu(smooth) * cfg.threshold_scale, cfg.min_hematoxylin)
    fg = smooth > thr
    radius = int(round(cfg.opening_radius_um / px))
    if radius >= 1:
        fg = ndi.binary_opening(fg, structure=morphology.disk(radius))
    hole_px = cfg.fill_holes_um2 / px**2
    if hole_px > 0:
        fg |= ~_drop_small(~fg, hole_px)  # small background components (holes) join fg
    fg = _drop_small(fg, cfg.min_area_um2 / px**2)
    if not fg.any():
        return np.zeros(shape, np.int32)

    s = max(cfg.blob_sigma_um / px, 0.5)
    blob = -ndi.gaussian_laplace(hema, s) * s**2  # scale-normalised LoG, > 0 on H-rich blobs
    if cfg.distance_weight > 0:
        scale = float(np.percentile(blob[fg], 95))
        dist_um = ndi.distance_transform_edt(fg) * px
        radius_um = cfg.blob_sigma_um * np.sqrt(2)  # radius of the blob the LoG prefers
        blob = blob / max(scale, 1e-9) + cfg.distance_weight * dist_um / radius_um
    min_dist = max(1, int(round(cfg.min_distance_um / px)))
    peaks = feature.peak_local_max(
        blob, min_distance=min_dist, labels=fg.astype(np.int32), exclude_border=False
    )
    markers = np.zeros(shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = segmentation.watershed(-blob, markers, mask=fg)
    # foreground components that received no seed become one nucleus each
    orphans, n_orphans = ndi.label(fg & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)

    area_px = np.bincount(labels.ravel())
    bad = (area_px < cfg.min_area_um2 / px**2) | (area_px > cfg.max_area_um2 / px**2)
    bad[0] = False
    labels[bad[labels]] = 0
    labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def _background(image: np.ndarray, px: float, radius_um: float) -> np.ndarray:
    """Slowly varying haematoxylin level (uneven staining, thickness, vignetting).

    A grey opening with a square of half-side ``radius_um`` (removes everything nucleus-sized
    and keeps the surrounding level), computed at ~1 um/px, box-smoothed and upsampled.
    """
    step = max(1, min(int(round(1.0 / px)), min(image.shape) // 2))
    small = (
        ndi.uniform_filter(image, step)[step // 2 :: step, step // 2 :: step] if step > 1 else image
    )
    size = 2 * max(1, int(round(radius_um / (px * step)))) + 1
    bg = ndi.uniform_filter(ndi.grey_opening(small, size=(size, size)), size)
    if step > 1:
        bg = transform.resize(bg, image.shape, order=1, preserve_range=True, anti_aliasing=False)
    return bg.astype(image.dtype, copy=False)


def _centroids(labels: np.ndarray) -> np.ndarray:
    """(N, 2) float64 centroids of sequential labels 1..N."""
    n = int(labels.max())
    if n == 0:
        return np.zeros((0, 2), np.float64)
    flat = labels.ravel()
    rows, cols = np.indices(labels.shape)
    count = np.maximum(np.bincount(flat, minlength=n + 1)[1:], 1).astype(np.float64)
    r = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:] / count
    c = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:] / count
    return np.stack([r, c], axis=1)


def _outlines(labels: np.ndarray) -> tuple:
    """One closed (K, 2) (row, col) polygon per label 1..N (longest contour)."""
    out = []
    for i, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            out.append(np.zeros((0, 2), np.float64))
            continue
        crop = np.pad(labels[sl] == i + 1, 1).astype(np.float32)
        contours = measure.find_contours(crop, 0.5)
        poly = max(contours, key=len) if contours else np.zeros((0, 2))
        if len(poly) > 1 and np.allclose(poly[0], poly[-1]):
            poly = poly[:-1]
        out.append(poly + np.array([sl[0].start - 1, sl[1].start - 1], np.float64))
    return tuple(out)


def nucleus_features(
    image: np.ndarray, labels: np.ndarray, pixel_size_um: float
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Morphology, stain and texture features of given instance labels.

    Lets ground-truth instances be featurised exactly like detections. Texture: a grey-level
    co-occurrence matrix of the haematoxylin channel quantised to 32 levels on a fixed
    optical-density range (comparable across images), pixel pairs at 0.5 um (at least 1 px)
    in the 0, 45, 90 and 135 degree directions, both pixels inside the nucleus, symmetric;
    ``glcm_contrast`` = E[(i - j)^2], ``glcm_homogeneity`` = E[1 / (1 + (i - j)^2)]
    (the :func:`skimage.feature.graycoprops` definitions, averaged over directions).

    Args:
        image: (H, W, 3|4) RGB image.
        labels: (H, W) integer instance image, 0 background; labels need not be sequential.
        pixel_size_um: micrometres per pixel.

    Returns:
        ``(features, names)``: (N, F) float32, one row per distinct non-zero label in
        increasing label order, no NaNs; ``names`` is :data:`FEATURE_NAMES`.
    """
    rgb = _as_rgb(image)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} != image shape {rgb.shape[:2]}")
    seq, _, _ = segmentation.relabel_sequential(labels.astype(np.int64))
    return _features(color.rgb2hed(rgb), seq.astype(np.int32), _check_pixel_size(pixel_size_um))


def _features(
    hed: np.ndarray, labels: np.ndarray, px: float, outlines: tuple | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Features of sequential labels 1..N, vectorised over nuclei where possible.

    Area, axes, eccentricity and orientation come from pixel moments (the
    :func:`skimage.measure.regionprops` formulas); perimeter and solidity from the
    sub-pixel outline polygon (length, and polygon area / convex-hull area).
    """
    n = int(labels.max())
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32), FEATURE_NAMES
    if outlines is None:
        outlines = _outlines(labels)
    flat = labels.ravel()
    rows, cols = (a.ravel().astype(np.float64) for a in np.indices(labels.shape))

    def per_label(weights: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights, n + 1)[1:]

    count = np.maximum(np.bincount(flat, minlength=n + 1)[1:], 1).astype(np.float64)
    mr, mc = per_label(rows) / count, per_label(cols) / count
    # central second moments / N: the inertia tensor of regionprops
    rr = per_label(rows**2) / count - mr**2
    cc = per_label(cols**2) / count - mc**2
    rc = per_label(rows * cols) / count - mr * mc
    half_trace, root = (rr + cc) / 2, np.sqrt(((rr - cc) / 2) ** 2 + rc**2)
    lam1, lam2 = half_trace + root, np.maximum(half_trace - root, 0)
    ecc = np.sqrt(np.clip(1 - lam2 / np.where(lam1 > 0, lam1, 1), 0, 1)) * (lam1 > 0)
    orientation = np.where(
        cc - rr == 0, np.where(rc > 0, -np.pi / 4, np.pi / 4), 0.5 * np.arctan2(2 * rc, rr - cc)
    )
    hema, eosin = hed[..., 0].ravel(), hed[..., 1].ravel()
    mean_h, mean_e = per_label(hema) / count, per_label(eosin) / count
    std_h = np.sqrt(np.maximum(per_label(hema**2) / count - mean_h**2, 0))
    perim, solidity = _polygon_shape(outlines)
    area = count * px**2
    perim = perim * px
    circ = np.where(perim > 0, 4 * np.pi * area / np.maximum(perim, 1e-12) ** 2, 1.0)
    contrast, homog = _glcm(hed[..., 0], labels, n, max(1, int(round(0.5 / px))))
    feats = np.stack(
        [
            area,
            perim,
            ecc,
            solidity,
            4 * np.sqrt(lam1) * px,
            4 * np.sqrt(lam2) * px,
            orientation,
            mean_h,
            mean_e,
            std_h,
            np.minimum(circ, 1.0),
            contrast,
            homog,
        ],
        axis=1,
    )
    return np.nan_to_num(feats).astype(np.float32), FEATURE_NAMES


def _polygon_shape(outlines: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Perimeter (px) and solidity (area / convex-hull area) of closed polygons."""
    perim = np.zeros(len(outlines))
    solidity = np.ones(len(outlines))
    for i, poly in enumerate(outlines):
        if len(poly) < 3:
            continue
        nxt = np.roll(poly, -1, axis=0)
        perim[i] = np.hypot(*(nxt - poly).T).sum()
        area = 0.5 * abs(np.dot(poly[:, 0], nxt[:, 1]) - np.dot(poly[:, 1], nxt[:, 0]))
        try:
            hull_area = ConvexHull(poly).volume
        except QhullError:
            continue
        if hull_area > 0:
            solidity[i] = min(1.0, area / hull_area)
    return perim, solidity


def _glcm(hema: np.ndarray, labels: np.ndarray, n: int, d: int) -> tuple[np.ndarray, ...]:
    """Per-label GLCM contrast and homogeneity (vectorised, no per-nucleus loop)."""
    q = np.clip(hema / _H_MAX * (_GLCM_LEVELS - 1), 0, _GLCM_LEVELS - 1).round().astype(np.int16)
    h, w = labels.shape
    s_con = np.zeros(n + 1)
    s_hom = np.zeros(n + 1)
    s_cnt = np.zeros(n + 1)
    for dr, dc in ((0, d), (-d, d), (d, 0), (d, d)):  # 0, 45, 90, 135 degrees
        r0, r1 = max(0, -dr), h - max(0, dr)
        c0, c1 = max(0, -dc), w - max(0, dc)
        a, b = labels[r0:r1, c0:c1], labels[r0 + dr : r1 + dr, c0 + dc : c1 + dc]
        same = (a == b) & (a > 0)
        diff2 = (q[r0:r1, c0:c1][same] - q[r0 + dr : r1 + dr, c0 + dc : c1 + dc][same]) ** 2
        lab = a[same]
        s_con += np.bincount(lab, diff2.astype(np.float64), n + 1)
        s_hom += np.bincount(lab, 1.0 / (1.0 + diff2), n + 1)
        s_cnt += np.bincount(lab, minlength=n + 1)
    cnt = np.maximum(s_cnt[1:], 1)
    hom = np.where(s_cnt[1:] > 0, s_hom[1:] / cnt, 1.0)
    return s_con[1:] / cnt, hom
