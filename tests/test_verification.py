"""Verification (media/verification.py) and how the Judge uses it: copies of a drawing have a low
residual against it and look-alikes a high one, recolourings a high colour difference; a
duplicate in the verification band is kept or refused by it; a score under the threshold is
confirmed by a close alignment; enrolled images verified the same picture are twins."""

import functools
import hashlib
import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from service.core import judging
from service.core.decision import Policy
from service.core.judging import Judge
from service.media import alignment, cells, overlays, verification
from service.storage.records import Enrolment
from service.storage.store import Store
from tests.conftest import IMAGES

MODEL = "sscd@224"


def clock(*hours: int, size: int = 300, without_tick: int | None = None) -> Image.Image:
    """A drawing on white: a clock face with its hand at each of `hours` (look-alikes differ by the hour)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    centre, radius = size / 2, size * 0.4
    draw.ellipse([centre - radius, centre - radius, centre + radius, centre + radius], outline="black", width=8)
    for tick in set(range(12)) - {without_tick}:
        angle = np.radians(tick * 30)
        inner, outer = radius * 0.8, radius * 0.95
        draw.line([centre + inner * np.sin(angle), centre - inner * np.cos(angle),
                   centre + outer * np.sin(angle), centre - outer * np.cos(angle)], fill="black", width=5)  # fmt: skip
    for hour in hours:
        angle = np.radians(hour * 30)
        tip = (centre + radius * 0.7 * np.sin(angle), centre - radius * 0.7 * np.cos(angle))
        draw.line([centre, centre, *tip], fill="red", width=18)
        draw.ellipse([tip[0] - 22, tip[1] - 22, tip[0] + 22, tip[1] + 22], fill="red")
    draw.rectangle([centre - 20, size * 0.92, centre + 20, size * 0.97], fill="blue")
    return image


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


COPIES = {
    "re-encoded": lambda image: jpeg(image, 40),
    "resized": lambda image: image.resize((170, 170)),
    "cropped": lambda image: image.crop((20, 20, 290, 290)),
    "bordered": lambda image: _bordered(image),
    "rotated": lambda image: image.rotate(5, fillcolor="white"),
}


def _bordered(image: Image.Image) -> Image.Image:
    framed = Image.new("RGB", (360, 360), "white")
    framed.paste(image, (30, 30))
    return framed


def warmed(image: Image.Image, amount: int) -> Image.Image:
    """A white-balance cast: red up and blue down by `amount`."""
    pixels = np.asarray(image).astype(int)
    pixels[..., 0] += amount
    pixels[..., 2] -= amount
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def recoloured_hand(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image).copy()
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    pixels[red] = (0, 70, 220)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("how", COPIES)
def test_a_copy_has_a_low_residual_and_its_colours(how):
    found = verification.residual(COPIES[how](clock(3)), verification.reference(clock(3)))
    assert found.lightness < 0.3 and found.colour < Policy().verified_colour


@pytest.mark.parametrize("hour", [6, 11, 12])  # not 9: the mirror of 3 o'clock, the same picture mirrored
def test_a_look_alike_has_a_high_residual(hour):
    assert verification.residual(clock(hour), verification.reference(clock(3))).lightness > 0.8


def test_a_recolouring_shows_in_colour_not_in_lightness():
    found = verification.residual(recoloured_hand(clock(3)), verification.reference(clock(3)))
    assert found.lightness < 0.5 and found.colour > 8 * Policy().verified_colour


def test_a_less_saturated_copy_fits_its_colours_by_one_gain(monkeypatch):
    """Saturation scales every colour's chroma alike: one fitted gain explains it, while no gain
    turns the red hand blue. Compared unfitted, the washed-out copy looks recoloured."""
    reference, policy = verification.reference(clock(3)), Policy()
    washed_out = jpeg(ImageEnhance.Color(clock(3)).enhance(0.35), 85)
    assert verification.residual(washed_out, reference).colour < policy.verified_colour
    assert verification.residual(recoloured_hand(clock(3)), reference).colour > 8 * policy.verified_colour
    monkeypatch.setattr(cells, "CHROMA_GAINS", (1.0, 1.0))
    assert verification.residual(washed_out, reference).colour > 3 * policy.verified_colour


def test_a_grey_copy_is_compared_with_the_candidate_in_grey(monkeypatch):
    """A grey copy has lost its colours and its lightness is the original's luma: compared with the
    candidate made grey the same way it is as close as a re-encoded copy, and a grey look-alike is
    not. Compared with the candidate in colour, the grey copy differs in colour and lightness."""
    reference, policy = verification.reference(clock(3)), Policy()
    grey_copy = jpeg(ImageOps.grayscale(clock(3)).convert("RGB"), 85)
    assert verification.residual(grey_copy, reference).is_close(policy.verified_residual, policy.verified_colour)
    grey_look_alike = jpeg(ImageOps.grayscale(clock(11)).convert("RGB"), 85)
    assert verification.residual(grey_look_alike, reference).lightness > 0.8
    monkeypatch.setattr(verification, "_has_no_colour", lambda picture: False)
    in_colour = verification.residual(grey_copy, reference)
    assert in_colour.colour > 3 * policy.verified_colour and in_colour.lightness > 3 * policy.verified_residual


def thumbnail(image: Image.Image, side: int) -> Image.Image:
    return image.resize((side, side), Image.Resampling.LANCZOS)


@pytest.mark.parametrize("side", [24, 40, 64])
def test_a_thumbnail_is_compared_at_its_own_resolution(side):
    """A thumbnail cannot show the lines the reference has: compared at its resolution and for the
    detail it shows, it is as close as a re-encoded copy, and far from a look-alike of its size."""
    reference = verification.reference(clock(3))
    copy = verification.residual(thumbnail(clock(3), side), reference)
    look_alike = verification.residual(thumbnail(clock(11), side), reference)
    assert copy.upscale > 2 and copy.for_its_detail(copy.lightness) < Policy().verified_residual
    assert look_alike.for_its_detail(look_alike.lightness) > 0.5


@pytest.mark.parametrize("turned", [45, 90])
def test_a_turned_picture_does_not_align(turned):
    """Rotating a drawing a quarter turn makes another sign (an arrow pointing elsewhere)."""
    query = clock(3).rotate(turned, fillcolor="white")
    assert verification.residual(query, verification.reference(clock(3))).lightness > 0.8


def test_a_squeezed_copy_is_near_but_not_close():
    """Squeezed to two thirds of its height the clock lines up (the band keeps such a copy), but the
    alignment's stretch says it changed shape: a thicker pen, a longer arrow look like that, so it
    is not confirmed under the threshold. An unsqueezed copy is."""
    reference = verification.reference(clock(3))
    squeezed = verification.residual(clock(3).resize((300, 200)), reference)
    assert squeezed.lightness < 0.3 and squeezed.stretch > 1.3
    assert not squeezed.is_close(Policy().verified_residual, Policy().verified_colour)
    copy = verification.residual(jpeg(clock(3), 80), reference)
    assert copy.stretch < 1.05 and copy.is_close(Policy().verified_residual, Policy().verified_colour)


def test_a_close_match_is_judged_by_the_best_alignment_that_keeps_the_aspect():
    """SIFT's similarity and its refinement to affine are both tried. On a small copy's few
    keypoints the refinement can fit a stretch the copy does not have: the best alignment then says
    "stretched" while the similarity agrees almost as well, and that one is judged. A squeezed copy
    has no such alignment (above): only stretched does it line up."""
    policy = Policy()
    small = np.asarray(clock(3).resize((120, 120)).convert("L"))
    similarity, *refined = alignment.fits(
        alignment.keypoints(small), alignment.keypoints(np.asarray(clock(3).convert("L")))
    )
    assert alignment.stretch(similarity) == pytest.approx(1.0) and len(refined) == 1
    stretched = verification.Residual(0.02, 1.0, stretch=1.4)
    assert not stretched.is_close(policy.verified_residual, policy.verified_colour)
    aspect_kept = verification.Residual(0.05, 1.0)
    assert replace(stretched, unstretched=aspect_kept).is_close(policy.verified_residual, policy.verified_colour)
    drifted = replace(stretched, unstretched=replace(aspect_kept, lightness=0.5))
    assert not drifted.is_close(policy.verified_residual, policy.verified_colour)
    squeezed = verification.residual(clock(3).resize((300, 200)), verification.reference(clock(3)))
    assert squeezed.unstretched is not None and squeezed.unstretched.lightness > 0.5


def stickered(image: Image.Image, left: int, top: int, side: int = 40) -> Image.Image:
    """A smiley sticker pasted on the picture, as the benchmark's `sticker` family does."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    draw.ellipse((left, top, left + side, top + side), fill=(250, 200, 0), outline=(20, 20, 20), width=3)
    for eye in (0.25, 0.6):
        draw.ellipse((left + side * eye, top + side * 0.3, left + side * (eye + 0.15), top + side * 0.45), fill="black")
    return image


@pytest.mark.parametrize("corner", [(8, 8), (250, 8), (10, 250), (250, 250)])
def test_a_sticker_on_a_plain_part_is_left_out_beside_overlays(corner, monkeypatch):
    """An overlay adds structure where the picture had little and takes none away elsewhere: beside
    the few cells (of 64) it covers in a corner, the copy is as close as a re-encoded one. Counted
    everywhere, the sticker is a difference, as an added part of a look-alike would be."""
    query, reference = jpeg(stickered(clock(3), *corner), 85), verification.reference(clock(3))
    found, policy = verification.residual(query, reference), Policy()
    assert found.beside_overlays < policy.verified_residual
    assert not found.is_close(policy.verified_residual, policy.verified_colour)
    monkeypatch.setattr(cells, "OVERLAY_CELLS", 0)
    monkeypatch.setattr(overlays, "MOST_COVERED", 0.0)  # nor by its colours (below)
    assert verification.residual(query, reference).beside_overlays == found.lightness > policy.verified_residual


def captioned(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """A caption of two lines across the picture, outlined in black, as the benchmark's `text` family."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=34)
    for top, words in ((60, "BREAKING NEWS"), (170, "WOW LOL")):
        draw.text((12, top), words, font=font, fill=colour, stroke_width=2, stroke_fill=(0, 0, 0))
    return image


def test_a_caption_in_its_own_colours_is_left_out_beside_overlays(monkeypatch):
    """A caption over busy parts of the picture (the structure rule cannot tell it) is painted in a
    colour the picture has nowhere: beside those pixels the copy is close. In the picture's own
    ink (the black of its ticks) it could be a look-alike's different part, and it stays counted."""
    reference = verification.reference(clock(3))
    foreign = verification.residual(jpeg(captioned(clock(3), (40, 230, 60)), 85), reference)
    own_inks = verification.residual(jpeg(captioned(clock(3), (0, 0, 0)), 85), reference)
    assert foreign.beside_overlays < 0.15 < 0.5 < foreign.lightness
    assert own_inks.beside_overlays > 0.5
    monkeypatch.setattr(overlays, "MOST_COVERED", 0.0)
    assert verification.residual(jpeg(captioned(clock(3), (40, 230, 60)), 85), reference).beside_overlays > 0.5


def test_a_plain_query_does_not_align_to_a_drawing():
    """Gain and offset would fit a plain picture to anything, with no difference left."""
    plain = Image.new("RGB", (200, 200), (40, 40, 40))
    assert verification.residual(plain, verification.reference(clock(3))) == verification.NOT_ALIGNED


def test_a_copy_inside_another_picture_aligns():
    host = Image.new("RGB", (512, 512), (90, 140, 60))
    host.paste(clock(3).resize((180, 180)), (260, 40))
    found = verification.residual(jpeg(host, 85), verification.reference(clock(3)))
    assert found.lightness < Policy().verified_residual and found.colour < Policy().verified_colour


def test_a_plain_reference_cannot_be_judged():
    plain = Image.new("RGB", (200, 200), (40, 160, 110))
    assert verification.residual(plain, verification.reference(plain)) is None


PORTRAIT = "portrait-portraits-nagas-naga-mace_warrior1.jpg"  # a detailed painting, 400 x 400


@pytest.mark.parametrize("corner", [(40, 80), (120, 120), (180, 40)])
def test_a_detailed_crop_is_close(corner):
    """A third of a detailed painting, cropped: every edge a fraction of a pixel off once aligned.
    Compared with the best candidate pixel one pixel around, it agrees closely (pixel for pixel
    these crops left 0.09-0.14, over the close limit)."""
    painting = Image.open(IMAGES / PORTRAIT).convert("RGB")
    left, top = corner
    crop = jpeg(painting.crop((left, top, left + 220, top + 220)), 85)
    found = verification.residual(crop, verification.reference(painting))
    assert found.is_close(Policy().verified_residual, Policy().verified_colour)


def test_a_smooth_crop_with_few_keypoints_aligns_as_a_crop():
    """Over half the side of a smooth wallpaper: too few keypoints to fit, and ECC maps whole to
    whole, but placed inside the candidate by template matching it agrees closely (not where a
    query must show the candidate whole: the region stage)."""
    wallpaper = Image.open(IMAGES / "gnome-adwaita.jpg").convert("RGB")
    crop, reference = jpeg(wallpaper.crop((102, 205, 665, 768)), 85), verification.reference(wallpaper)
    assert verification.residual(crop, reference).is_close(Policy().verified_residual, Policy().verified_colour)
    assert verification.residual(crop, reference, as_crops=False).lightness > 1.0


def test_a_query_over_most_of_the_candidate_is_not_aligned_as_a_crop(monkeypatch):
    """The same wallpaper cropped to nine tenths of its side, its keypoints and ECC left out: as a
    crop it would cover over CROP_MOST_COVER of the candidate shrunk a little, where a thick bar
    lines up with a thinner one; a thumbnail of it, placed at full size, counts."""
    monkeypatch.setattr(alignment, "fits", lambda query, candidate: [])
    monkeypatch.setattr(verification, "_by_ecc", lambda query, candidate_lab, give_up: (verification.NOT_ALIGNED, None))
    wallpaper = Image.open(IMAGES / "gnome-adwaita.jpg").convert("RGB")
    reference = verification.reference(wallpaper)
    most, half = (jpeg(wallpaper.crop((0, 0, side, side)), 85) for side in (950, 640))
    assert verification.residual(most, reference) == verification.NOT_ALIGNED
    assert verification.residual(half, reference).is_close(Policy().verified_residual, Policy().verified_colour)
    whole = thumbnail(wallpaper, 40)  # placed at full size: a thumbnail is its whole picture
    assert verification.residual(whole, reference).is_close(Policy().verified_residual, Policy().verified_colour)
    monkeypatch.setattr(verification, "CROP_MOST_COVER", 1.0)
    assert verification.residual(most, reference).is_close(Policy().verified_residual, Policy().verified_colour)


@pytest.mark.parametrize("box", [(0, 0, 400, 200), (100, 100, 400, 400), (0, 0, 280, 280)])
def test_an_alignment_covering_less_of_the_candidate_than_asked_does_not_count(box):
    """A window shows a copy whole (the region stage asks its candidates for `window_cover`): a part of
    the painting aligns closely where it covers it, but covers half of it; the painting shown whole on
    a page covers all of it."""
    painting, policy = Image.open(IMAGES / PORTRAIT).convert("RGB"), Policy()
    reference, close = verification.reference(painting), (policy.verified_residual, policy.verified_colour)
    part = jpeg(painting.crop(box), 85)
    found = verification.residual(part, reference, as_crops=False)
    assert found.is_close(*close) and 0.4 < found.cover < 0.7
    held = verification.residual(part, reference, as_crops=False, least_cover=policy.window_cover)
    assert not held.is_close(1.0, 99.0)
    page = Image.new("RGB", (300, 300), "white")
    page.paste(painting.resize((220, 220)), (40, 40))
    shown_whole = verification.residual(jpeg(page, 85), reference, as_crops=False, least_cover=policy.window_cover)
    assert shown_whole.is_close(*close) and shown_whole.cover > 0.95


def test_a_windows_candidate_is_held_to_its_residual_as_measured(store):
    """A window finds a copy shown small, and a look-alike of the same size: a clock one tick short,
    76 px, agrees within `verified_residual` for the detail it shows (as flat-theme icons that differ
    by a corner do), but not as measured; the clock itself agrees closely either way. A window's
    candidate gets no allowance for lost detail; a whole query's does."""
    enrolled, policy = unit(60), Policy()
    enrol(store, "three", enrolled, clock(3))
    enrol(store, "far", unit(61), clock(7).rotate(90))
    judge = Judge(store, policy)
    query = mixed(enrolled, unit(62), 0.4)  # a margin score of ~0.4: under the threshold, within reach
    search = judge.judge(query, neighbours(store, query, ["three", "far"]), 0.0)
    confirm = functools.partial(judge.confirmed, search, close=policy.verified_residual, as_crops=False)
    one_tick_short = thumbnail(clock(3, without_tick=0), 76)
    assert confirm(lambda: one_tick_short).decision.is_duplicate
    assert not confirm(lambda: one_tick_short, window=True).decision.is_duplicate
    assert confirm(lambda: thumbnail(clock(3), 76), window=True).decision.is_duplicate


@pytest.mark.parametrize("corner", [(0, 0), (30, 30), (120, 40)])
def test_a_small_part_of_a_drawing_is_not_taken_for_a_crop(corner, monkeypatch):
    """A sixth of the clock (a bit of its rim and ticks) fits inside it exactly, as a red disc fits
    a flag or a stick figure's body another pose: a crop counts from a fifth of the candidate."""
    drawing = clock(3)
    left, top = corner
    part, reference = jpeg(drawing.crop((left, top, left + 120, top + 120)), 85), verification.reference(drawing)
    assert not verification.residual(part, reference).is_close(1.0, Policy().verified_colour)
    monkeypatch.setattr(verification, "CROP_LEAST_COVER", 0.0)
    assert verification.residual(part, reference).is_close(Policy().verified_residual, Policy().verified_colour)


def dots(spacing: int, size: int = 300) -> Image.Image:
    """A repeating pattern: a grid of dots."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for y in range(spacing // 2, size, spacing):
        for x in range(spacing // 2, size, spacing):
            draw.ellipse([x - spacing / 4, y - spacing / 4, x + spacing / 4, y + spacing / 4], fill=(30, 60, 160))
    return image


def test_a_repeating_pattern_cannot_be_judged():
    """Two dot grids of other spacings line up exactly once scaled (a thumbnail of one looked a
    close copy of the other): a repeating reference is not judged, a drawing or a painting is."""
    assert all(alignment.repeats(np.asarray(dots(spacing).convert("L")), 128) for spacing in (12, 24, 45))
    assert verification.residual(thumbnail(dots(30), 60), verification.reference(dots(24))) is None
    painting = Image.open(IMAGES / PORTRAIT).convert("L")
    assert not any(alignment.repeats(np.asarray(picture), 128) for picture in (clock(3).convert("L"), painting))


def test_a_small_querys_colours_count_for_its_detail():
    """Enlarged three times to be compared, a thumbnail's colours are smeared over three times as
    many pixels: its colour distance is allowed three times as much, as its lightness residual."""
    policy = Policy()
    smeared = verification.Residual(2.5 * policy.verified_residual, 2.5 * policy.verified_colour, upscale=3.0)
    assert smeared.is_close(policy.verified_residual, policy.verified_colour)
    full_size = replace(smeared, upscale=1.0)
    assert not full_size.is_close(policy.verified_residual, policy.verified_colour)


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path)
    yield opened
    opened.close()


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return vector / np.linalg.norm(vector)


def mixed(a: np.ndarray, b: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at `cosine` to a, in the plane of a and b."""
    b = b - (b @ a) * a
    b /= np.linalg.norm(b)
    return (cosine * a + np.sqrt(1 - cosine**2) * b).astype(np.float32)


def enrol(store: Store, key: str, feature: np.ndarray, picture: Image.Image) -> None:
    digest = hashlib.sha256(key.encode()).digest()
    store.enroll(MODEL, [Enrolment(key, digest, feature, 0.0, {}, reference=verification.reference(picture))])


def neighbours(store: Store, query: np.ndarray, keys: list[str]):
    with store.read() as view:
        records = [view.by_key(key) for key in keys]
    scored = [(r, float(np.linalg.norm(query - r.feature.astype(np.float32)))) for r in records]
    return sorted(scored, key=lambda pair: pair[1])


def test_verification_keeps_a_copy_and_refuses_a_look_alike_in_its_band(store):
    enrolled, other = unit(1), unit(2)
    enrol(store, "three", enrolled, clock(3))
    enrol(store, "far", other, clock(7).rotate(90))
    judge = Judge(store, Policy())
    query = mixed(enrolled, unit(3), 0.53)  # a margin score of ~0.53: inside the band [0.47, 0.67)
    nearest = neighbours(store, query, ["three", "far"])
    copy = judge.judge(query, nearest, 0.0, lambda: jpeg(clock(3).resize((200, 200))))
    assert copy.decision.is_duplicate and copy.residual < 0.5
    unverified_score = judge.judge(query, nearest, 0.0).decision.score
    assert copy.decision.score == pytest.approx(unverified_score - Policy().verification_weight * copy.residual)
    stickered_copy = judge.judge(query, nearest, 0.0, lambda: jpeg(stickered(clock(3), 250, 250)))
    assert stickered_copy.decision.is_duplicate and stickered_copy.residual < Policy().verified_residual
    look_alike = judge.judge(query, nearest, 0.0, lambda: clock(11))
    assert not look_alike.decision.is_duplicate and look_alike.residual > 0.6
    assert look_alike.decision.score < Policy().margin_threshold
    certain = mixed(enrolled, unit(3), 0.95)  # far above the band: no residual could refuse it
    unverified = judge.judge(certain, neighbours(store, certain, ["three", "far"]), 0.0, lambda: clock(11))
    assert unverified.decision.is_duplicate and unverified.residual is None


def test_enrolled_images_verified_the_same_picture_are_twins(store):
    """The nearest's second is the same drawing enrolled again at cosine 0.88 (under 0.95): as a
    twin it is skipped by the margin; a look-alike at the same cosine is not."""
    base = unit(10)
    enrol(store, "original", base, clock(3))
    enrol(store, "again", mixed(base, unit(11), 0.88), clock(3).resize((180, 180)))
    enrol(store, "look-alike", mixed(base, unit(12), 0.88), clock(8))
    judge = Judge(store, Policy())
    query = mixed(base, unit(13), 0.9)
    with_twin = judge.judge(query, neighbours(store, query, ["original", "again"]), 0.0)
    with_other = judge.judge(query, neighbours(store, query, ["original", "look-alike"]), 0.0)
    assert with_twin.decision.is_duplicate and with_twin.decision.each == [True, True]
    assert with_twin.decision.score > with_other.decision.score + 0.3


def test_a_score_within_reach_under_the_threshold_needs_a_close_alignment(store):
    """A margin score of ~0.36 (under 0.47, within its reach down to 0.15): a copy aligned closely is a
    duplicate, with its twin (also under a slight warm cast, its colours ~6 off); a look-alike or a
    recolouring is not, nor a clock with a second hand (a part added in the picture's own inks); a
    score further down is not verified at all."""
    enrolled, other = unit(20), unit(21)
    enrol(store, "three", enrolled, clock(3))
    enrol(store, "three again", mixed(enrolled, unit(22), 0.97), clock(3))
    enrol(store, "far", other, clock(7).rotate(90))
    judge = Judge(store, Policy())
    query = mixed(enrolled, unit(23), 0.36 / 0.9)  # cosine 0.4; the other picture at ~0: margin ~0.4
    nearest = neighbours(store, query, ["three", "three again", "far"])
    assert Policy().margin_threshold - Policy().verification_reach < 0.4 < Policy().margin_threshold
    for shown in (jpeg(clock(3).resize((220, 220)), 70), thumbnail(clock(3), 40), warmed(clock(3), 12)):
        copy = judge.judge(query, nearest, 0.0, lambda picture=shown: picture)
        assert copy.decision.is_duplicate and copy.decision.each == [True, True, False]
        assert copy.decision.score < Policy().margin_threshold
    for look_alike in (clock(11), recoloured_hand(clock(3)), thumbnail(clock(11), 40), clock(3, 7)):
        refused = judge.judge(query, nearest, 0.0, lambda picture=look_alike: picture)
        assert not refused.decision.is_duplicate and refused.residual is not None
    further = mixed(enrolled, unit(23), 0.1)
    further_nearest = neighbours(store, further, ["three", "three again", "far"])
    unverified = judge.judge(further, further_nearest, 0.0, lambda: clock(3))
    assert not unverified.decision.is_duplicate and unverified.residual is None


def test_an_overlay_in_colours_of_its_own_is_forgiven_a_little_under_the_threshold(store):
    """A sticker painted in colours the clock has nowhere is left out: at a margin score of ~0.36
    (within --overlay-reach of the threshold) the copy under it is a duplicate, with its twin. A
    second hand, drawn in the clock's own red, is not (a look-alike's added part is drawn in its
    inks), nor the sticker at ~0.18, under the overlay reach but within the verification's."""
    enrolled, other = unit(50), unit(51)
    enrol(store, "three", enrolled, clock(3))
    enrol(store, "three again", mixed(enrolled, unit(52), 0.97), clock(3))
    enrol(store, "far", other, clock(7).rotate(90))
    judge, policy = Judge(store, Policy()), Policy()
    for cosine, forgiven in ((0.36, True), (0.18, False)):
        query = mixed(enrolled, unit(53), cosine)
        nearest = neighbours(store, query, ["three", "three again", "far"])
        score = judge.judge(query, nearest, 0.0).decision.score
        assert (score >= policy.margin_threshold - policy.overlay_reach) == forgiven
        assert score >= policy.margin_threshold - policy.verification_reach
        found = judge.judge(query, nearest, 0.0, lambda: jpeg(stickered(clock(3), 250, 250), 85))
        assert found.decision.each == [forgiven, forgiven, False] and found.residual > 0.5, score
        assert not judge.judge(query, nearest, 0.0, lambda: jpeg(clock(3, 7), 85)).decision.is_duplicate
        assert judge.judge(query, nearest, 0.0, lambda: jpeg(clock(3), 85)).decision.is_duplicate


def test_the_nearer_the_threshold_the_less_closely_a_copy_must_agree(store):
    """A blurred copy (residual ~0.13: more than `verified_residual`, less than the 0.2 allowed at the
    threshold) is confirmed near the threshold, and just above it where the band's score alone
    would refuse it, but not far under it; a look-alike is refused everywhere."""
    from PIL import ImageFilter

    enrolled, other = unit(40), unit(41)
    enrol(store, "three", enrolled, clock(3))
    enrol(store, "far", other, clock(7).rotate(90))
    judge, policy = Judge(store, Policy()), Policy()
    blurred = clock(3).filter(ImageFilter.GaussianBlur(2.5))
    found = verification.residual(blurred, verification.reference(clock(3)))
    assert policy.verified_residual < found.lightness < policy.verified_residual_at_threshold - 0.03
    for cosine, confirmed in ((0.33, False), (0.46, True), (0.5, True)):
        query = mixed(enrolled, unit(42), cosine)
        nearest = neighbours(store, query, ["three", "far"])
        score = judge.judge(query, nearest, 0.0).decision.score
        copy = judge.judge(query, nearest, 0.0, lambda: blurred)
        assert copy.decision.is_duplicate == confirmed, (score, copy.residual)
        assert not judge.judge(query, nearest, 0.0, lambda: clock(11)).decision.is_duplicate
    assert score - policy.verification_weight * found.beside_overlays < policy.margin_threshold <= score


def test_a_thumbnail_is_verified_whatever_its_score(store):
    """A thumbnail's descriptor is far from its original's: at a margin score of ~0.1, under the
    verification's reach, a query under --small-query-side is verified all the same and its close
    match confirmed; a thumbnail of a look-alike is not, nor a query of unknown or larger size."""
    enrolled, other = unit(60), unit(61)
    enrol(store, "three", enrolled, clock(3))
    enrol(store, "far", other, clock(7).rotate(90))
    judge, policy = Judge(store, Policy()), Policy()
    query = mixed(enrolled, unit(62), 0.1)
    nearest = neighbours(store, query, ["three", "far"])
    assert judge.judge(query, nearest, 0.0).decision.score < policy.margin_threshold - policy.verification_reach
    small = thumbnail(clock(3), 40)
    found = judge.judge(query, nearest, 0.0, lambda: small, query_side=40)
    assert found.decision.each == [True, False] and found.residual < policy.verified_residual
    for side in (0, policy.small_query_side):
        unverified = judge.judge(query, nearest, 0.0, lambda: small, query_side=side)
        assert not unverified.decision.is_duplicate and unverified.residual is None
    look_alike = judge.judge(query, nearest, 0.0, lambda: thumbnail(clock(11), 40), query_side=40)
    assert not look_alike.decision.is_duplicate and look_alike.residual > policy.verified_residual


def test_a_thumbnail_is_confirmed_against_a_neighbour_further_than_the_nearest(store):
    """A thumbnail's descriptor ranks its original near, not first: a 40 px thumbnail whose nearest
    record is a look-alike is the duplicate of its second, alone. Not a query of unknown size, nor
    one that is not enlarged --thumbnail-enlargement times to be compared (a 60 px one: about 2.1x),
    nor with the rule off, nor a thumbnail of neither picture."""
    look_alike, original, far = unit(70), unit(71), unit(72)
    enrol(store, "eleven", look_alike, clock(11))
    enrol(store, "three", original, clock(3))
    enrol(store, "far", far, clock(7).rotate(90))
    query = 0.35 * look_alike + 0.2 * original + 0.9 * unit(73)
    query /= np.linalg.norm(query)
    nearest = neighbours(store, query, ["eleven", "three", "far"])
    assert [record.key for record, _ in nearest] == ["eleven", "three", "far"]
    judge, policy = Judge(store, Policy()), Policy()
    found = judge.judge(query, nearest, 0.0, lambda: thumbnail(clock(3), 40), query_side=40)
    assert found.decision.each == [False, True, False] and found.residual < policy.verified_residual
    assert not judge.judge(query, nearest, 0.0, lambda: thumbnail(clock(3), 40)).decision.is_duplicate
    assert not judge.judge(query, nearest, 0.0, lambda: thumbnail(clock(5), 40), query_side=40).decision.is_duplicate
    enlarged_less = judge.judge(query, nearest, 0.0, lambda: thumbnail(clock(3), 60), query_side=60)
    assert not enlarged_less.decision.is_duplicate
    less = Judge(store, replace(policy, thumbnail_enlargement=2.0))
    assert less.judge(query, nearest, 0.0, lambda: thumbnail(clock(3), 60), query_side=60).decision.each[1]
    off = Judge(store, replace(policy, thumbnail_enlargement=0.0))
    assert not off.judge(query, nearest, 0.0, lambda: thumbnail(clock(3), 40), query_side=40).decision.is_duplicate


def test_a_thumbnail_found_by_a_small_view_is_a_duplicate_only_when_confirmed(store):
    """Whatever the distance to a small view (here the same for a copy and a look-alike), the
    nearest is declared only when the thumbnail agrees with it within `small_view_residual`."""
    enrol(store, "three", unit(80), clock(3))
    enrol(store, "far", unit(81), clock(7).rotate(90))
    query = mixed(unit(80), unit(82), 0.5)
    nearest = neighbours(store, query, ["three", "far"])
    judge, policy = Judge(store, Policy()), Policy()
    found = judge.through_small_views(query, nearest, 0.0, lambda: thumbnail(clock(3), 20))
    assert found.decision.each == [True, False] and found.residual is not None
    assert not judge.through_small_views(query, nearest, 0.0, lambda: thumbnail(clock(11), 20)).decision.is_duplicate
    stricter = Judge(store, replace(policy, small_view_residual=0.0))
    assert not stricter.through_small_views(query, nearest, 0.0, lambda: thumbnail(clock(3), 20)).decision.is_duplicate


def test_nothing_enrolled_is_nothing_to_verify(store):
    """An empty index: no candidate, no duplicate, no verification (a Check before any Enroll)."""
    empty = Judge(store, Policy()).judge(unit(30), [], 0.0, lambda: clock(3))
    assert not empty.decision.is_duplicate and empty.residual is None


def test_a_copy_of_a_picture_enrolled_small_is_confirmed_by_its_larger_twin(store, monkeypatch):
    """The nearest record is the picture enrolled as a 32 px icon, its twin the full picture: a
    crop shows detail the icon has not, so it is confirmed against the twin, which alone is its
    duplicate (what did not verify is not declared). Without trying the twins it would be missed."""
    enrolled = unit(40)
    enrol(store, "icon", enrolled, clock(3).resize((32, 32), Image.Resampling.LANCZOS))
    enrol(store, "full", mixed(enrolled, unit(41), 0.97), clock(3))
    enrol(store, "far", unit(42), clock(7).rotate(90))
    query = mixed(enrolled, unit(43), 0.4)  # a margin score of ~0.4: under the threshold, within reach
    nearest = neighbours(store, query, ["icon", "full", "far"])
    assert [record.key for record, _ in nearest] == ["icon", "full", "far"]
    crop = lambda: jpeg(clock(3).crop((30, 30, 270, 270)), 80)  # noqa: E731
    confirmed = Judge(store, Policy()).judge(query, nearest, 0.0, crop)
    assert confirmed.decision.is_duplicate and confirmed.decision.each == [False, True, False]
    monkeypatch.setattr(judging, "CONFIRMED_TWINS", 0)
    assert not Judge(store, Policy()).judge(query, nearest, 0.0, crop).decision.is_duplicate


def test_a_stretched_look_alike_is_not_a_twin(store):
    """Two line-join icons line up exactly once one is stretched into the other: enrolled pictures
    are twins only when they are a close match, shape included, as for a query."""
    base = unit(50)
    enrol(store, "original", base, clock(3))
    enrol(store, "squeezed", mixed(base, unit(51), 0.88), clock(3).resize((300, 200)))
    query = mixed(base, unit(52), 0.9)
    judged = Judge(store, Policy()).judge(query, neighbours(store, query, ["original", "squeezed"]), 0.0)
    assert judged.decision.is_duplicate and judged.decision.each == [True, False]
    found = verification.residual(verification.picture_of(verification.reference(clock(3))),
                                  verification.reference(clock(3).resize((300, 200))))  # fmt: skip
    assert found.lightness < Policy().pair_twin_residual and found.stretch > 1.3  # a twin by lightness alone


def test_a_query_prepared_once_and_a_kept_candidate_give_the_residuals_made_afresh():
    """What the service reuses within a Check (the query's side, verification.QueryPicture) and across
    Checks (the record's side, verification.Candidate, kept as uint8) changes no residual: each is the
    residual made from the picture and the reference's bytes, to the last digit, however often reused."""
    reference = verification.reference(clock(3))
    grey = verification._grey(verification.picture_of(reference), verification.REFERENCE_SIDE)
    kept = verification.candidate(reference)
    assert np.array_equal(kept.descriptors.astype(np.float32), alignment.keypoints(grey)[1])
    queries = [jpeg(clock(3), 60), clock(11), thumbnail(clock(3), 40), ImageOps.grayscale(clock(3)).convert("RGB")]
    for query in queries:
        prepared = verification.QueryPicture(query)
        candidate = verification.candidate(reference, prepared.has_no_colour)
        for _ in range(2):
            assert repr(verification.compared(prepared, candidate)) == repr(verification.residual(query, reference))
    assert verification.candidate(verification.reference(Image.new("RGB", (200, 200), "white"))) is None


def test_the_judge_keeps_each_candidate_once_within_its_budget():
    made = []
    kept = judging.Kept(budget=250, size=lambda value: value.nbytes)

    class Sized:
        nbytes = 100

    def make(key):
        made.append(key)
        return Sized()

    for key in ["a", "b", "a", "c", "a", "b"]:
        kept.get(key, lambda key=key: make(key))
    assert made == ["a", "b", "c", "b"] and kept.used <= 250  # "b" was the least recently used when "c" came


def test_points_stored_at_enrolment_give_the_residuals_made_from_the_reference(store):
    """A record enrolled with its reference's points (verification.reference_points) and one enrolled
    before they were stored (none: made from the reference when first compared) give every query the
    residual made afresh from the reference's bytes, as verification made it before points were stored."""
    falcon = Image.open(IMAGES / "portrait-portraits-monsters-falcon.jpg").convert("RGB")
    pictures = {"clock": clock(3), "falcon": falcon}
    queries = {
        "clock": [jpeg(clock(3), 60), clock(11), thumbnail(clock(3), 40), ImageOps.grayscale(clock(3)).convert("RGB")],
        "falcon": [jpeg(falcon.resize((200, 150)), 50), falcon.transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
    }
    for number, (name, picture) in enumerate(pictures.items()):
        reference = verification.reference(picture)
        for stored, points in (("with-points", verification.reference_points(reference)), ("before-points", b"")):
            digest = hashlib.sha256(f"{name}/{stored}".encode()).digest()
            enrolment = Enrolment(f"{name}/{stored}", digest, unit(number), 0.0, {}, reference=reference)
            store.enroll(MODEL, [replace(enrolment, reference_points=points)])
        judge = Judge(store, Policy())
        with store.read() as view:
            records = [view.by_key(f"{name}/{stored}") for stored in ("with-points", "before-points")]
            assert view.reference_points(records[0].id) and not view.reference_points(records[1].id)
        for query in queries[name]:
            afresh = verification.residual(query, reference)
            assert afresh is not None
            for record in records:
                assert measured(judge._residual(lambda query=query: query, record)) == pytest.approx(
                    measured(afresh), abs=1e-3
                )
    plain = verification.reference(Image.new("RGB", (200, 200), "white"))
    assert verification.reference_points(plain) == verification.UNJUDGEABLE
    assert verification.candidate(plain, stored_points=verification.UNJUDGEABLE) is None


def test_a_reference_as_the_query_with_its_stored_points_gives_the_residuals_made_afresh():
    """FindDuplicates verifies an enrolled record's reference as the query (QueryPicture.of_reference),
    taking the keypoints stored at enrolment for its as-is side: each residual is the one made from the
    reference's picture, with its stored points or without."""
    falcon = Image.open(IMAGES / "portrait-portraits-monsters-falcon.jpg").convert("RGB")
    references = [verification.reference(picture) for picture in (clock(3), clock(11), falcon, jpeg(clock(3), 40))]
    for query in references:
        afresh = verification.QueryPicture(verification.picture_of(query))
        stored = verification.QueryPicture.of_reference(query, verification.reference_points(query))
        assert np.array_equal(stored.shown[0].points[1], afresh.shown[0].points[1])
        for other in references:
            candidate = verification.candidate(other, afresh.has_no_colour)
            made = [verification.compared(prepared, candidate) for prepared in (afresh, stored)]
            assert repr(made[0]) == repr(made[1])
    assert verification.QueryPicture.of_reference(references[0], verification.UNJUDGEABLE).shown


def measured(found: verification.Residual) -> tuple[float, ...]:
    return found.lightness, found.colour, found.beside_overlays, found.upscale, found.stretch


def test_alignments_given_up_early_change_no_close_match():
    """Where only a close match counts, ECC is given up on a hopeless pair after a few iterations and a
    crop nowhere correlated is not refined: no copy or look-alike changes its verdict for that."""
    falcon = Image.open(IMAGES / "portrait-portraits-monsters-falcon.jpg").convert("RGB")
    reference = verification.reference(clock(3))
    copies = [jpeg(clock(3), 40), clock(3).crop((0, 0, 300, 240)), clock(3).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    for query in [*copies, clock(11), clock(3, without_tick=6), falcon]:
        prepared = verification.QueryPicture(query)
        candidate = verification.candidate(reference, prepared.has_no_colour)
        full, quick = (verification.compared(prepared, candidate, only_close=only) for only in (False, True))
        for close in (Policy().verified_residual, Policy().verified_residual_at_threshold):
            assert full.is_close(close, Policy().verified_colour) == quick.is_close(close, Policy().verified_colour)
    assert all(verification.residual(copy, reference).is_close(0.2, 8.0) for copy in copies)
    camel = Image.open(IMAGES / "stamp-animals-mammals-camel-camel.jpg").convert("RGB")
    unrelated = verification.QueryPicture(falcon).shown[0]
    camel_lab = verification.candidate(verification.reference(camel)).lab.astype(np.float32)
    aligned = verification._by_ecc(unrelated, camel_lab)[0]
    assert 1.0 < aligned.lightness < verification.NO_ALIGNMENT  # ECC aligns them, and far apart
    assert verification._by_ecc(unrelated, camel_lab, give_up=True) == (verification.NOT_ALIGNED, None)
    assert alignment.as_crop(unrelated.grey, camel_lab[..., 0]) is None
