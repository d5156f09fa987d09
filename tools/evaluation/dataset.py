"""The benchmark's data: what is enrolled, and the positive and negative queries, from folders.

The dev folder (a manifest whose `group` ties files showing one picture) is split by group into
references (enrolled), a background set (for score normalisation) and distractors (never
enrolled). Optionally:
- a share of the references is enrolled a second time under another key (`twin/<file>`),
  re-encoded or resized, as catalogues that already hold copies do;
- a catalogue folder (the clipart set) is enrolled beside them: a number of its groups with every
  file of each group (the library's own duplicates), its other groups as hard negatives.

A positive query's right answers are every enrolled key showing its picture; `copies` counts
them (1: enrolled once, 2 or more: enrolled twice or more). The manifests' groups miss some
pictures a person calls the same (a drawing recoloured, mirrored or re-rendered under another
name, and dev stamps that are catalogue drawings): same_pictures.json lists such pairs, found by
looking at every pair of different groups that SSCD puts close (docs/quality.md says how), and
they count as the same picture too. An `inset` query also shows its host picture, a dev
distractor: when that is the same picture as an enrolled one, its keys are right answers too; and
a drawing that shows others inside it (shown_inside.json: a sign that holds other signs whole, a
card with a frame or ornaments drawn around the plain deck's card) has their keys as right
answers, not the other way round.
"""

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tools.evaluation.transforms import FAMILIES, apply

TWIN_PREFIX = "twin/"
CATALOGUE_PREFIX = "catalogue/"
# Generated many-pointed stars that render as near-identical rings: whether two are the same
# picture has no good answer (the clipart README), so they are left out.
EXCLUDED_CATEGORIES = ("shapes/stars",)
NEGATIVE_FAMILIES_PER_DRAWING = 2
SAME_PICTURES = Path(__file__).with_name("same_pictures.json")
SHOWN_INSIDE = Path(__file__).with_name("shown_inside.json")  # [the larger picture, the picture inside it]


@dataclass
class Query:
    family: str
    source: str  # the file it was made from, as its key would be
    expected: frozenset[str]  # the right answers; empty for a negative
    origin: str  # "dev" or "catalogue"
    data: bytes = b""
    copies: int = 0  # enrolled keys showing this picture
    answer: dict = field(default_factory=dict)
    host: str = ""  # the picture an `inset` is shown in, as its key would be

    @property
    def positive(self) -> bool:
        return bool(self.expected)


@dataclass
class Benchmark:
    enrol: dict[str, Path | bytes]  # key -> file, or bytes made for it
    background: list[Path]
    queries: list[Query]
    counts: dict[str, int]


def read_manifest(folder: Path) -> list[dict]:
    path = folder / "manifest.json"
    if path.exists():
        return json.loads(path.read_text())
    return [{"file": p.name, "group": p.name, "canonical": True} for p in sorted(folder.glob("*.jpg"))]


def grouped(entries: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry["group"], []).append(entry)
    return groups


def shuffled_names(groups: dict, seed: int | str) -> list[str]:
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    return names


def build(
    images: Path,
    seed: int,
    reference_share: float = 0.7,
    background_share: float = 0.1,
    twin_share: float = 0.0,
    catalogue: Path | None = None,
    catalogue_groups: int = 0,
    catalogue_queries: int = 0,
    catalogue_negatives: int = 0,
    catalogue_once: bool = False,
    with_bytes: bool = True,
) -> Benchmark:
    groups = grouped(read_manifest(images))
    names = shuffled_names(groups, seed)
    cut_references = round(len(names) * reference_share)
    cut_background = cut_references + round(len(names) * background_share)
    rng = random.Random(f"{seed} twins")
    enrol: dict[str, Path | bytes] = {}
    expected: dict[str, frozenset[str]] = {}  # reference file -> its keys
    natural: dict[str, str] = {}  # another file of a reference's group -> the reference
    for name in names[:cut_references]:
        members = sorted(groups[name], key=lambda e: not e.get("canonical", False))
        reference = members[0]["file"]
        enrol[reference] = images / reference
        keys = {reference}
        if rng.random() < twin_share:
            enrol[TWIN_PREFIX + reference] = twin_bytes(images / reference, rng)
            keys.add(TWIN_PREFIX + reference)
        expected[reference] = frozenset(keys)
        natural.update({member["file"]: reference for member in members[1:]})
    background = [images / e["file"] for name in names[cut_references:cut_background] for e in groups[name]]
    distractors = [e["file"] for name in names[cut_background:] for e in groups[name]]
    hosts = [images / d for d in distractors]

    queries = []
    for reference, keys in expected.items():
        queries += transformed(images / reference, reference, keys, "dev", FAMILIES, seed, hosts, with_bytes)
    for copy, reference in natural.items():
        keys = expected[reference]
        queries.append(Query("natural", copy, keys, "dev", (images / copy).read_bytes(), len(keys)))
    for distractor in distractors:
        queries.append(Query("original", distractor, frozenset(), "dev", (images / distractor).read_bytes()))
        queries += transformed(images / distractor, distractor, frozenset(), "dev", FAMILIES, seed, hosts, with_bytes)

    counts = {"references": len(expected), "twins": sum(len(k) > 1 for k in expected.values())}
    counts |= {"background": len(background), "distractors": len(distractors)}
    if catalogue is not None:
        queries += add_catalogue(
            catalogue, seed, catalogue_groups, catalogue_queries, catalogue_negatives, enrol, hosts, counts,
            catalogue_once, with_bytes,
        )  # fmt: skip
    links = group_links(groups, "") + json.loads(SAME_PICTURES.read_text())
    if catalogue is not None:
        links += group_links(grouped(read_manifest(catalogue)), CATALOGUE_PREFIX)
    inside = json.loads(SHOWN_INSIDE.read_text())
    counts["queries_relabelled"] = add_same_pictures(queries, enrol, links, inside)
    return Benchmark(enrol, background, queries, counts)


def group_links(groups: dict[str, list[dict]], prefix: str) -> list[list[str]]:
    """Pairs that tie every file of a manifest group to its first, as keys."""
    return [[prefix + members[0]["file"], prefix + m["file"]] for members in groups.values() for m in members[1:]]


def pictures(pairs: list[list[str]]) -> Callable[[str], str]:
    """The picture a key shows, as one representative key per set the listed pairs tie together
    (transitively); a twin shows its original's picture."""
    parent: dict[str, str] = {}

    def picture(key: str) -> str:
        key = key.removeprefix(TWIN_PREFIX)
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    for a, b in pairs:
        parent[picture(a)] = picture(b)
    return picture


def add_same_pictures(queries: list[Query], enrol: dict, pairs: list[list[str]], inside: list[list[str]] = ()) -> int:
    """Adds to each query's right answers the enrolled keys that show the same picture (or its
    host's, or one `inside` says its picture shows) by the listed pairs (transitively, twins
    included); returns how many queries changed."""
    picture = pictures(pairs)
    members: dict[str, set[str]] = {}
    for key in enrol:
        members.setdefault(picture(key), set()).add(key)
    shown: dict[str, set[str]] = {}
    for larger, smaller in inside:
        shown.setdefault(picture(larger), set()).add(picture(smaller))
    changed = 0
    for query in queries:
        keys = set(query.expected)
        shows = {picture(key) for key in {query.source, *query.expected, *filter(None, [query.host])}}
        for each in shows.union(*(shown.get(one, ()) for one in shows)):
            keys |= members.get(each, set())
        if keys != query.expected:
            query.expected, query.copies, changed = frozenset(keys), len(keys), changed + 1
    return changed


def add_catalogue(
    folder: Path,
    seed: int,
    enrolled_groups: int,
    positive_groups: int,
    negative_drawings: int,
    enrol: dict,
    hosts: list[Path],
    counts: dict,
    once: bool = False,
    with_bytes: bool = True,
) -> list[Query]:
    """Enrols `enrolled_groups` of the catalogue (each with all its files, or `once`: with the one
    its queries are made from); returns positive queries from `positive_groups` of them (every
    family) and negatives from `negative_drawings` of the others (the drawing itself and two random
    families)."""
    entries = [e for e in read_manifest(folder) if e.get("category") not in EXCLUDED_CATEGORIES]
    groups = grouped(entries)
    if once:
        groups = {name: sorted(members, key=lambda member: member["file"])[:1] for name, members in groups.items()}
    names = shuffled_names(groups, f"{seed} catalogue")
    enrolled, others = names[:enrolled_groups], names[enrolled_groups:]
    for name in enrolled:
        for member in groups[name]:
            enrol[CATALOGUE_PREFIX + member["file"]] = folder / member["file"]
    queries = []
    for name in enrolled[:positive_groups]:
        files = sorted(member["file"] for member in groups[name])
        keys = frozenset(CATALOGUE_PREFIX + f for f in files)
        queries += transformed(
            folder / files[0], CATALOGUE_PREFIX + files[0], keys, "catalogue", FAMILIES, seed, hosts, with_bytes
        )
    for name in others[:negative_drawings]:
        drawing = sorted(member["file"] for member in groups[name])[0]
        source = CATALOGUE_PREFIX + drawing
        queries.append(Query("original", source, frozenset(), "catalogue", (folder / drawing).read_bytes()))
        families = random.Random(f"{seed} {source} families").sample(FAMILIES, NEGATIVE_FAMILIES_PER_DRAWING)
        queries += transformed(folder / drawing, source, frozenset(), "catalogue", families, seed, hosts, with_bytes)
    counts |= {
        "catalogue_groups": len(enrolled),
        "catalogue_files": sum(len(groups[name]) for name in enrolled),
        "catalogue_groups_enrolled_more_than_once": sum(len(groups[name]) > 1 for name in enrolled),
        "catalogue_negative_drawings": len(others[:negative_drawings]),
    }
    return queries


def transformed(
    path: Path,
    source: str,
    keys: frozenset[str],
    origin: str,
    families,
    seed: int,
    hosts: list[Path],
    with_bytes: bool = True,
) -> list[Query]:
    """The queries made from `path` by each of `families` (without `with_bytes`: who they are and
    what is right for them, their bytes left empty, as tools/rescore.py needs them)."""
    image = Image.open(path).convert("RGB") if with_bytes else None
    queries = []
    for family in families:
        rng = random.Random(f"{seed} {source} {family}")
        host = None
        if family == "inset":
            candidates = [h for h in hosts if h != path]
            host = rng.choice(candidates) if candidates else None
        shown_in = Image.open(host).convert("RGB") if host and with_bytes else None
        data = apply(family, image, rng, shown_in) if with_bytes else b""
        queries.append(Query(family, source, keys, origin, data, len(keys), host=host.name if host else ""))
    return queries


def twin_bytes(path: Path, rng: random.Random) -> bytes:
    """The picture as a catalogue would hold it a second time: re-encoded, or resized and re-encoded."""
    image = Image.open(path).convert("RGB")
    if rng.random() < 0.5:
        scale = rng.uniform(0.6, 0.9)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=rng.randint(70, 92))
    return out.getvalue()
