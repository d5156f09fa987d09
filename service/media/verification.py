"""Verification: is a candidate the same picture as the query, or a look-alike?

A global descriptor puts another pose of a stick figure, a locked padlock for an open one or a flag with another
emblem as close to a drawing as a cropped copy is. After aligning the two pictures, though, a copy agrees with its
original almost everywhere, while a look-alike leaves at least one region that disagrees. The residual: align the
query to the candidate's stored reference (a 256 px colour thumbnail, ~10 KB per record, and its keypoints stored
beside it) by SIFT matches (a RANSAC similarity, and its refinement to affine), by ECC on the trimmed pictures
squashed square, and, where neither agrees closely, as a crop placed inside the candidate, each with the query and,
unless it agrees closely as it is, its mirror; fit brightness and contrast on the lightness; the residual is the
worst cell of an 8 x 8 grid of |difference| / the candidate's contrast, for the best alignment, and beside the few
cells an overlay explains (media/cells.py). Copies (re-encoded, cropped, bordered, rotated) score ~0.02-0.1;
look-alikes 0.6 and more. docs/quality.md has the measurements; the Judge (core/judging.py) uses the residual beside
overlays as score - weight x min(residual, cap) near the threshold, and under it asks for a close match everywhere,
or, nearer the threshold, beside an overlay's own colours (Residual.is_close).

What makes a low residual trustworthy that far down: the candidate is compared at the query's resolution (a
thumbnail or an inset is not blamed for detail it lost); mean colours per cell are compared, fitted by one chroma
gain at most (a flag of other colours has the same lightness structure); a query without colour is compared with the
candidate made grey by luma, as such a copy is; the alignment's stretch is kept (a thicker pen or a longer arrow
lines up exactly once stretched); turned, flattened (gain under MIN_GAIN) or plain comparisons do not align. Each
pixel is compared with the best of its candidate's pixels one WORK pixel around it (edges a fraction of a pixel off
are not differences), and a repeating pattern is not judged at all.
"""

import functools
import io
import struct
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from PIL import Image, ImageOps

from service.media import alignment, cells

REFERENCE_SIDE = 256
REFERENCE_QUALITY = 90
QUERY_SIDE = 384
WORK = 128  # the side residuals are computed at
NO_ALIGNMENT = 9.0  # the residual when nothing aligns
# A query enlarged k times to be compared is allowed a k times larger residual, k up to this.
MAX_UPSCALE_ALLOWANCE = 4.0
CLOSE_STRETCH = 1.1  # a close match changes the aspect at most this much (the band rule keeps `aspect` copies)
# A query whose chroma (a*b* distance from grey, of 255) is under this for 99 % of its pixels has no colour: a grey
# picture stays under 1 through JPEG, noise in each channel takes it over 3 (the benchmark's `grey` and `noise`
# families, docs/quality-history.md).
GREY_CHROMA = 3.0
# A query aligned as a crop of the candidate (media/alignment.py's as_crop: a small crop has too few keypoints)
# counts only where no other alignment agrees within CROP_RESIDUAL, when the crop covers CROP_LEAST_COVER to
# CROP_MOST_COVER of the candidate and agrees that closely: a small part of a simple drawing (a disc, a bar, a stick
# figure's body) fits inside many, and a query over most of it counts placed at full size (a thumbnail) but not
# shrunk a little (a thick bar shrunk is a thinner one; docs/quality-history.md).
CROP_RESIDUAL = 0.08
CROP_LEAST_COVER = 0.2
CROP_MOST_COVER = 0.8
# A mirrored copy, aligned mirrored, agrees within this share of its lightness residual as it is
# (--mirror distinct; docs/quality.md, "Mirror images").
MIRROR_SHARE = 0.5
# ECC runs at most ECC_ITERATIONS. Where only a close match counts (Residual.is_close, not beside an
# overlay's colours), an alignment whose correlation is still under ECC_HOPELESS after ECC_TRIAL
# iterations is given up: on 818 pairs verified by 300 Checks of the catalogue benchmark (seed 0),
# every ECC alignment within 0.3 of its candidate had reached 0.59 by then, and 62 % of the others
# were under 0.45 (docs/performance.md).
ECC_ITERATIONS = 50
ECC_TRIAL = 10
ECC_HOPELESS = 0.45


@dataclass(frozen=True, order=True)
class Residual:
    """How the aligned query differs from the candidate, in its worst cell (media/cells.py)."""

    lightness: float  # mean |difference| / the candidate's contrast, after fitting gain and offset
    colour: float  # distance of the mean colours (CIELAB a*b*, 0-255 scale), one chroma gain fitted: hues show
    upscale: float = 1.0  # candidate pixels per query pixel, at least 1: a small query shows less detail
    stretch: float = 1.0  # how much the alignment changes the aspect (1: not at all)
    cover: float = field(default=1.0, compare=False)  # the share of the candidate's content the query covers
    # The lightness residual leaving out the few cells an overlay (text, a sticker) explains.
    beside_overlays: float = field(default=NO_ALIGNMENT, compare=False)
    # The lightness and colour residuals beside the pixels in colours the candidate has nowhere (an
    # overlay painted in its own colours; for the best alignment only): inf when there are none.
    beside_foreign: tuple[float, float] = field(default=(float("inf"), float("inf")), compare=False)
    # When this alignment changes the aspect: the best one that does not (a small copy's few
    # keypoints can fit it a stretch it does not have), which is_close judges instead.
    unstretched: "Residual | None" = field(default=None, compare=False)

    def for_its_detail(self, difference: float) -> float:
        """A lightness residual or colour distance over the detail the query could show: enlarged k
        times to be compared, a copy differs about k times as much (measured on thumbnails; k counted
        up to 4), and a small JPEG's colours are smeared over twice its pixels."""
        return difference / min(self.upscale, MAX_UPSCALE_ALLOWANCE)

    @property
    def judged(self) -> "Residual | None":
        """The alignment a close match is judged by: this one, or when it changes the aspect the
        best one that does not (None: there is none)."""
        return self if self.stretch <= CLOSE_STRETCH else self.unstretched

    def is_close(self, residual: float, colour: float, beside_foreign: bool = False, for_detail: bool = True) -> bool:
        """Does the query agree closely with the candidate (everywhere, or beside an overlay's own colours): for its
        detail (or, without `for_detail`, in lightness as measured), in colour, in shape, by an alignment that keeps
        the aspect? (A thinner bar, a longer arrow: stretched, a look-alike drawing lines up exactly.)"""
        if (judged := self.judged) is None:
            return False
        lightness, colours = judged.beside_foreign if beside_foreign else (judged.lightness, judged.colour)
        lightness = judged.for_its_detail(lightness) if for_detail else lightness
        return lightness <= residual and judged.for_its_detail(colours) <= colour


NOT_ALIGNED = Residual(NO_ALIGNMENT, NO_ALIGNMENT)
Aligned = tuple[np.ndarray, np.ndarray, np.ndarray] | None  # the query warped, the candidate, the valid pixels


def reference(picture: Image.Image) -> bytes:
    """What a record stores to be verified against: a small colour JPEG of it."""
    thumbnail = picture.convert("RGB")
    thumbnail.thumbnail((REFERENCE_SIDE, REFERENCE_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumbnail.save(out, "JPEG", quality=REFERENCE_QUALITY)
    return out.getvalue()


def picture_of(reference_bytes: bytes) -> Image.Image:
    return Image.open(io.BytesIO(reference_bytes)).convert("RGB")


# What a record stores beside its reference, made from it at enrolment (`reference_points`): the
# part of its Candidate that costs (SIFT and the repetition test: ~12 ms of ~13), or
# UNJUDGEABLE. A record enrolled before has none, and its Candidate is made whole from the reference.
UNJUDGEABLE = b"\x00"
_POINTS_HEADER = struct.Struct("<BHH")  # version, the lightness's width, the number of keypoints
_POINTS_VERSION = 1


def reference_points(reference_bytes: bytes) -> bytes:
    """A reference's keypoints (and the width of the lightness they are in), packed to be stored
    beside it: UNJUDGEABLE when it has too little structure to tell, or repeats itself."""
    return _packed_points(_grey(picture_of(reference_bytes), REFERENCE_SIDE))


def _packed_points(lightness: np.ndarray) -> bytes:
    if lightness.std() < cells.MIN_STRUCTURE or alignment.repeats(lightness, WORK):
        return UNJUDGEABLE
    points, descriptors = alignment.keypoints(lightness)
    header = _POINTS_HEADER.pack(_POINTS_VERSION, lightness.shape[1], len(points))
    return header + points.astype(np.float32).tobytes() + descriptors.astype(np.uint8).tobytes()


def _unpacked_points(packed: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    version, grey_width, count = _POINTS_HEADER.unpack_from(packed)
    if version != _POINTS_VERSION:
        raise ValueError(f"stored reference points of version {version}; this code reads {_POINTS_VERSION}")
    start = _POINTS_HEADER.size
    points = np.frombuffer(packed, np.float32, 2 * count, start).reshape(count, 2)
    descriptors = np.frombuffer(packed, np.uint8, 128 * count, start + points.nbytes).reshape(count, 128)
    return grey_width, points, descriptors


class QueryPicture:
    """A query's side of verification (its lightness, Lab and keypoints, and its mirror's), made
    once however many candidates it is compared with (not thread-safe: one Check's)."""

    def __init__(self, picture: Image.Image):
        self.picture = picture

    @classmethod
    def of_reference(cls, reference_bytes: bytes, stored_points: bytes = b"") -> "QueryPicture":
        """An enrolled record's reference as the query (FindDuplicates), with the keypoints stored
        beside it (reference_points) where they are those of its lightness here: a reference is no
        larger than QUERY_SIDE, so they are (the query's own keypoints, unless none are stored)."""
        query = cls(picture_of(reference_bytes))
        if stored_points and stored_points != UNJUDGEABLE:
            grey_width, points, descriptors = _unpacked_points(stored_points)
            as_it_is = query.shown[0]
            if grey_width == as_it_is.grey.shape[1]:
                as_it_is.points = (points, descriptors.astype(np.float32))
        return query

    @functools.cached_property
    def has_no_colour(self) -> bool:
        return _has_no_colour(self.picture)

    def as_it_is(self) -> "QueryPicture":
        """The query compared only as it is, not mirrored (a mirror image is another picture: --mirror
        distinct); what it has made already is shared."""
        only = QueryPicture(self.picture)
        only.__dict__["shown"] = self.shown[:1]
        return only

    @functools.cached_property
    def shown(self) -> list["_Shown"]:
        """The query and its mirror."""
        grey, mirror = _grey(self.picture, QUERY_SIDE), self.picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return [
            _Shown(picture, lightness) for picture, lightness in ((self.picture, grey), (mirror, grey[:, ::-1].copy()))
        ]


class _Shown:
    """One way the query is shown (as it is, or mirrored): its lightness and Lab at QUERY_SIDE, and
    what the keypoint and ECC alignments take of it, each made on first use."""

    def __init__(self, picture: Image.Image, grey: np.ndarray):
        self.picture, self.grey = picture, grey

    @functools.cached_property
    def lab(self) -> np.ndarray:
        return _lab(self.picture, QUERY_SIDE)

    @functools.cached_property
    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return alignment.keypoints(self.grey)

    @functools.cached_property
    def ecc_lab(self) -> np.ndarray:
        return _lab(self.picture, REFERENCE_SIDE)


@dataclass(frozen=True)
class Candidate:
    """A stored reference's side of verification, made once per record (and per colour mode: made
    grey for a query without colour) and kept by the Judge: the width of its lightness at
    REFERENCE_SIDE, its SIFT keypoints, and its Lab at WORK (both integer-valued: kept as uint8)."""

    grey_width: int
    points: np.ndarray
    descriptors: np.ndarray  # uint8
    lab: np.ndarray  # uint8

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + self.descriptors.nbytes + self.lab.nbytes


def candidate(reference_bytes: bytes, grey: bool = False, stored_points: bytes = b"") -> Candidate | None:
    """What verification compares a query with, of a stored reference and the points stored beside it
    (b"": none stored, made from the reference); `grey`: made grey, for a query without colour (its
    lightness, and so its points, stay the same). None when the reference has too little structure to
    tell, or repeats itself."""
    picture = picture_of(reference_bytes)
    packed = stored_points or _packed_points(_grey(picture, REFERENCE_SIDE))
    if packed == UNJUDGEABLE:
        return None
    grey_width, points, descriptors = _unpacked_points(packed)
    if grey:
        picture = ImageOps.grayscale(picture).convert("RGB")
    return Candidate(grey_width, points, descriptors, _lab(picture, WORK).astype(np.uint8))


def residual(
    query: Image.Image, reference_bytes: bytes, as_crops: bool = True, least_cover: float = 0.0
) -> Residual | None:
    """The query's residual against a stored reference (compared)."""
    shown = QueryPicture(query)
    return compared(shown, candidate(reference_bytes, shown.has_no_colour), as_crops, least_cover)


def compared(
    query: QueryPicture,
    reference: Candidate | None,
    as_crops: bool = True,
    least_cover: float = 0.0,
    only_close: bool = False,
) -> Residual | None:
    """The query's residual against a reference for its best alignment covering `least_cover` of its content
    or more (lower lightness: more surely the same picture), the query aligned as a crop of it too if `as_crops`;
    None when the reference cannot be judged (`candidate`). With `only_close`, the caller asks only whether
    they agree closely (Residual.is_close, not beside an overlay's colours), and an alignment that cannot get
    there is given up early (ECC_HOPELESS): a residual over ~0.3 may then be another alignment's, or none's."""
    if reference is None:
        return None
    candidate_lab = reference.lab.astype(np.float32)
    candidate_points = (reference.points, reference.descriptors.astype(np.float32))
    found = []
    for shown in query.shown:  # as it is, then mirrored unless it agrees closely as it is
        tried = [
            *_by_keypoints(shown, reference.grey_width, candidate_points, candidate_lab),
            _by_ecc(shown, candidate_lab, only_close),
        ]
        found += [pair for pair in tried if pair[0].cover >= least_cover]
        if _agrees(_best(found), CROP_RESIDUAL):
            break
    found = found or [(NOT_ALIGNED, None)]
    if as_crops and not _agrees(_best(found), CROP_RESIDUAL):
        crops = [crop for shown in query.shown if (crop := _as_crop(shown.lab, shown.grey, candidate_lab))]
        found += [crop for crop in crops if crop[0].cover >= least_cover]
    best, aligned = min(found, key=lambda pair: pair[0])
    if aligned is None:
        return best
    if best.stretch > CLOSE_STRETCH:
        kept = [other for other, aligned_other in found if aligned_other is not None and other.stretch <= CLOSE_STRETCH]
        best = replace(best, unstretched=min(kept, default=None))
    if only_close:  # beside_overlays and beside_foreign count only where an overlay is forgiven
        return best
    # An overlay's colours are looked for in the best alignment only: the rest are not used.
    foreign = cells.beside_foreign_colours(*aligned)
    return replace(best, beside_overlays=min(best.beside_overlays, foreign[0]), beside_foreign=foreign)


def shows_mirrored(query: QueryPicture, reference: Candidate | None) -> bool:
    """Does the query show the reference mirrored: aligned mirrored, it agrees with it within
    MIRROR_SHARE of how closely it agrees as it is (a picture that is its own mirror agrees both ways
    alike)? No for a reference that cannot be judged."""
    if reference is None:
        return False
    lab = reference.lab.astype(np.float32)
    points = (reference.points, reference.descriptors.astype(np.float32))
    as_it_is, mirrored = (
        min(pair[0] for pair in [*_by_keypoints(shown, reference.grey_width, points, lab), _by_ecc(shown, lab)])
        for shown in query.shown
    )
    return mirrored.lightness < MIRROR_SHARE * as_it_is.lightness


def _best(found: list[tuple[Residual, Aligned]]) -> Residual:
    return min((pair[0] for pair in found), default=NOT_ALIGNED)


def _has_no_colour(picture: Image.Image) -> bool:
    ab = _lab(picture, WORK)[..., 1:] - 128.0
    return float(np.percentile(np.hypot(ab[..., 0], ab[..., 1]), 99)) < GREY_CHROMA


def _grey(picture: Image.Image, side: int) -> np.ndarray:
    grey = ImageOps.grayscale(picture)
    grey.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(grey)


def _lab(picture: Image.Image, side: int) -> np.ndarray:
    small = picture.copy()
    small.thumbnail((side, side))
    return cv2.cvtColor(np.asarray(small), cv2.COLOR_RGB2LAB).astype(np.float32)


def _by_keypoints(shown: _Shown, grey_width: int, candidate_points, candidate_lab) -> list[tuple[Residual, Aligned]]:
    """Aligned by SIFT matches (alignment.fits) of the query's lightness: its Lab warped onto the
    candidate's thumbnail (whose lightness, the keypoints' frame, is `grey_width` wide)."""
    transforms = alignment.fits(shown.points, candidate_points)
    if not transforms:
        return [(NOT_ALIGNED, None)]
    scale = candidate_lab.shape[1] / grey_width
    return [
        _warped(shown.lab, (np.diag([scale, scale, 1.0]) @ np.vstack([transform, [0, 0, 1]]))[:2], candidate_lab)
        for transform in transforms
    ]


def _warped(query_lab: np.ndarray, to_work: np.ndarray, candidate_lab: np.ndarray) -> tuple[Residual, Aligned]:
    """The query's Lab (at QUERY_SIDE) mapped by `to_work` onto the candidate's (at WORK) and compared."""
    height, width = candidate_lab.shape[:2]
    upscale = float(np.sqrt(abs(np.linalg.det(to_work[:, :2]))))  # candidate pixels per query pixel
    query_lab, to_work = alignment.shrunk_for(query_lab, to_work, upscale)
    warped = cv2.warpAffine(query_lab, to_work, (width, height), flags=cv2.INTER_LINEAR)
    inside = np.full(query_lab.shape[:2], 255, np.uint8)
    valid = cv2.warpAffine(inside, to_work, (width, height), flags=cv2.INTER_NEAREST) > 0
    aligned = (warped, alignment.at_resolution(candidate_lab, upscale, upscale), alignment.inner(valid))
    top, bottom, left, right = alignment.trimmed(candidate_lab[..., 0])
    cover = float(valid[top:bottom, left:right].mean())
    found = replace(_compared(*aligned), upscale=max(upscale, 1.0), stretch=alignment.stretch(to_work), cover=cover)
    return found, aligned


def _as_crop(query_lab, query_grey, candidate_lab) -> tuple[Residual, Aligned] | None:
    """Aligned as a crop (alignment.as_crop), when that covers CROP_LEAST_COVER to CROP_MOST_COVER of
    the candidate, or more placed at full size (spanning it along a side: a thumbnail), and agrees
    within CROP_RESIDUAL (None otherwise)."""
    to_work = alignment.as_crop(query_grey, candidate_lab[..., 0])
    if to_work is None:
        return None
    found, aligned = _warped(query_lab, to_work, candidate_lab)
    (height, width), (query_height, query_width) = candidate_lab.shape[:2], query_grey.shape
    whole = to_work[0, 0] * query_width >= width - 1.5 or to_work[1, 1] * query_height >= height - 1.5
    cover = aligned[2].mean()
    covers = cover >= CROP_LEAST_COVER and (cover <= CROP_MOST_COVER or whole)
    return (found, aligned) if covers and _agrees(found, CROP_RESIDUAL) else None


def _agrees(found: Residual, residual: float) -> bool:
    return found.for_its_detail(found.lightness) <= residual


def _by_ecc(shown: _Shown, candidate_lab, give_up: bool = False) -> tuple[Residual, Aligned]:
    """Aligned by ECC (affine) on both pictures trimmed of plain margins and squashed square; not
    aligned when ECC is given up on (`give_up`: still under ECC_HOPELESS after ECC_TRIAL iterations)."""
    query_lab = shown.ecc_lab
    boxes = [alignment.trimmed(image[..., 0]) for image in (query_lab, candidate_lab)]
    squashed = [
        alignment.squash(image, box, WORK) for image, box in zip((query_lab, candidate_lab), boxes, strict=True)
    ]
    (query_height, query_width), (candidate_height, candidate_width) = (alignment.sides(box) for box in boxes)
    squashed[1] = alignment.at_resolution(squashed[1], WORK / query_width, WORK / query_height)
    transform = _ecc(squashed[1][..., 0], squashed[0][..., 0], give_up)
    if transform is None or not alignment.plausible(transform):
        return NOT_ALIGNED, None
    inverse = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(squashed[0], transform, (WORK, WORK), flags=inverse)
    inside = np.full((WORK, WORK), 255, np.uint8)
    valid = cv2.warpAffine(inside, transform, (WORK, WORK), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    # From candidate pixels to query pixels: unsquash the candidate, ECC's warp, squash the query.
    to_query = (
        np.diag([query_width, query_height]) @ transform[:, :2] @ np.diag([1 / candidate_width, 1 / candidate_height])
    )
    upscale = float(1 / np.sqrt(abs(np.linalg.det(to_query)) + 1e-12))
    aligned = (warped, squashed[1], alignment.inner(valid))
    found = replace(_compared(*aligned), upscale=max(upscale, 1.0), stretch=alignment.stretch(to_query))
    return replace(found, cover=float(valid.mean())), aligned


def _ecc(template: np.ndarray, image: np.ndarray, give_up: bool) -> np.ndarray | None:
    """ECC's affine map from template to image pixels: the identity where it does not converge (compared
    as they are), None where it is given up on (`give_up`: under ECC_HOPELESS after ECC_TRIAL iterations)."""
    runs = (ECC_TRIAL, ECC_ITERATIONS - ECC_TRIAL) if give_up else (ECC_ITERATIONS,)
    transform = np.eye(2, 3, dtype=np.float32)
    try:
        for number, iterations in enumerate(runs):
            criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-4)
            correlation, transform = cv2.findTransformECC(
                template, image, transform, cv2.MOTION_AFFINE, criteria, None, 3
            )
            if give_up and number == 0 and correlation < ECC_HOPELESS:
                return None
    except cv2.error:
        return np.eye(2, 3, dtype=np.float32)
    return transform


def _compared(query: np.ndarray, candidate: np.ndarray, valid: np.ndarray) -> Residual:
    found = cells.worst(query, candidate, valid)
    if found is None:
        return NOT_ALIGNED
    lightness, colour, beside_overlays = found
    return Residual(lightness, colour, beside_overlays=beside_overlays)
