"""The benchmark's transform families: what people do to an image before it comes back to us.

Each family maps (RGB image, seeded rng) to a new RGB image; `apply` encodes the result as the
query's bytes. Everything is drawn from the rng, so a seed reproduces every query exactly.
`inset` also takes a host picture (one that is never enrolled) to show the copy inside.
"""

import io
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, random.Random], Image.Image]
WORDS = [
    "sale",
    "new",
    "wow",
    "lol",
    "breaking",
    "exclusive",
    "2026",
    "free",
    "look",
    "omg",
    "best",
    "deal",
    "today",
    "only",
    "#1",
    "viral",
]


def downscale(image: Image.Image, rng: random.Random) -> Image.Image:
    factor = rng.uniform(0.2, 0.5)
    return image.resize((max(32, round(image.width * factor)), max(32, round(image.height * factor))))


def crop(area: float) -> Transform:
    def cropped(image: Image.Image, rng: random.Random) -> Image.Image:
        aspect = rng.uniform(0.75, 1.33)
        width = min(image.width, round(image.width * (area * aspect) ** 0.5))
        height = min(image.height, round(image.height * area / (width / image.width)))
        left, top = rng.randint(0, image.width - width), rng.randint(0, image.height - height)
        return image.crop((left, top, left + width, top + height))

    return cropped


def rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.rotate(rng.choice([-1, 1]) * rng.uniform(3, 8), Image.Resampling.BILINEAR)


def flip(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(image)


def colour(image: Image.Image, rng: random.Random) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.3, 1.7))


def grey(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def blur(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(max(image.size) * rng.uniform(0.003, 0.008)))


def noise(image: Image.Image, rng: random.Random) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(10, 25), pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def text(image: Image.Image, rng: random.Random) -> Image.Image:
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        font = ImageFont.load_default(size=max(8, round(image.height * rng.uniform(0.06, 0.14))))
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))).upper()
        x, y = rng.randint(0, image.width // 2), rng.randint(0, image.height * 3 // 4)
        draw.text((x, y), words, font=font, fill=random_colour(rng), stroke_width=2, stroke_fill=(0, 0, 0))
    return image


def sticker(image: Image.Image, rng: random.Random) -> Image.Image:
    """One to three emoji-like stickers: a face in a disc with a dark outline."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        size = round(min(image.size) * rng.uniform(0.15, 0.3))
        x, y = rng.randint(0, image.width - size), rng.randint(0, image.height - size)
        draw.ellipse(
            (x, y, x + size, y + size), fill=random_colour(rng), outline=(20, 20, 20), width=max(1, size // 20)
        )
        eye = size // 8
        for ex in (x + size * 0.3, x + size * 0.7):
            draw.ellipse(
                (ex - eye / 2, y + size * 0.35 - eye / 2, ex + eye / 2, y + size * 0.35 + eye / 2), fill=(0, 0, 0)
            )
        draw.arc(
            (x + size * 0.25, y + size * 0.4, x + size * 0.75, y + size * 0.8),
            20,
            160,
            fill=(0, 0, 0),
            width=eye // 2 + 1,
        )
    return image


def border(image: Image.Image, rng: random.Random) -> Image.Image:
    pad = [round(side * rng.uniform(0.05, 0.2)) for side in (image.width, image.height, image.width, image.height)]
    return ImageOps.expand(image, tuple(pad), fill=random_colour(rng))


def aspect(image: Image.Image, rng: random.Random) -> Image.Image:
    factor = rng.uniform(0.6, 0.8)
    if rng.random() < 0.5:
        return image.resize((max(32, round(image.width * factor)), image.height))
    return image.resize((image.width, max(32, round(image.height * factor))))


def thumbnail(image: Image.Image, rng: random.Random) -> Image.Image:
    """Longest side 16-64 px, as a preview or an avatar."""
    longest = rng.randint(16, 64)
    scale = longest / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def inset(image: Image.Image, rng: random.Random, host: Image.Image | None) -> Image.Image:
    """The copy scaled to 25-60 % of the side inside something else: another picture, a collage of
    four, or a plain frame with a caption (a screenshot of a post, a meme); a frame when there is
    no host picture."""
    side = 512
    layout = rng.choice(["picture", "collage", "frame"]) if host is not None else "frame"
    if layout == "picture":
        canvas = ImageOps.fit(host, (side, side))
    elif layout == "collage":
        canvas = Image.new("RGB", (side, side), random_colour(rng))
        tile = ImageOps.fit(host, (side // 2, side // 2))
        for corner in ((0, 0), (side // 2, 0), (0, side // 2), (side // 2, side // 2)):
            canvas.paste(ImageOps.mirror(tile) if rng.random() < 0.5 else tile, corner)
    else:
        canvas = Image.new("RGB", (side, side), random_colour(rng))
    fraction = rng.uniform(0.25, 0.6)
    scale = fraction * side / max(image.size)
    copy = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    x, y = rng.randint(0, side - copy.width), rng.randint(0, side - copy.height)
    canvas.paste(copy, (x, y))
    if layout == "frame":
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=rng.randint(18, 36))
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))).upper()
        where = (rng.randint(0, side // 3), 8 if y > side // 4 else side - 48)
        draw.text(where, words, font=font, fill=random_colour(rng), stroke_width=2, stroke_fill=(0, 0, 0))
    return canvas


SINGLE: dict[str, Transform] = {
    "jpeg": lambda image, rng: image,  # the low quality is applied when encoding (see apply)
    "downscale": downscale,
    "crop70": crop(0.7),
    "crop50": crop(0.5),
    "crop30": crop(0.3),
    "rotate": rotate,
    "flip": flip,
    "colour": colour,
    "grey": grey,
    "blur": blur,
    "noise": noise,
    "text": text,
    "sticker": sticker,
    "border": border,
    "aspect": aspect,
}
CHAINABLE = [name for name in SINGLE if name not in ("jpeg", "crop30")]
SINGLE["thumbnail"] = thumbnail
FAMILIES = [*SINGLE, "inset", "chain2", "chain3"]


def apply(family: str, image: Image.Image, rng: random.Random, host: Image.Image | None = None) -> bytes:
    """The query's bytes: the family's transform, then a JPEG encoding (quality 10-30 for "jpeg").
    `inset` needs a host picture."""
    if family.startswith("chain"):
        for name in rng.sample(CHAINABLE, int(family[-1])):
            image = SINGLE[name](image, rng)
    elif family == "inset":
        image = inset(image, rng, host)
    else:
        image = SINGLE[family](image, rng)
    quality = rng.randint(10, 30) if family == "jpeg" else rng.randint(75, 95)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()
