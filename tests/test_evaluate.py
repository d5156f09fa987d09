"""tools/evaluate.py end to end on the committed images: it runs, its numbers are sane and its answers reproducible;
tools/rescore.py's scoring of a run on changed labels; tools/twin_recall.py's pairing of two runs;
tools/thumbnail_views.py's ranks through a real service."""

import argparse
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tools import compare_runs
from tools.evaluation.dataset import Query, add_same_pictures, build
from tools.thumbnail_views import SEARCHES, SMALL_SIDE, measure, small_view
from tools.twin_recall import paired, rows_of

ROOT = Path(__file__).parent.parent
FLAGS = "--enroll-views 1 --check-views 1 --decision margin"
REPRODUCED_QUERIES = 60  # checked again in the reproducibility test


def evaluate(out: Path, *extra: str) -> dict:
    command = [sys.executable, "-m", "tools.evaluate", "--images", str(ROOT / "tests" / "images")]
    done = subprocess.run(
        [*command, "--service-flags", FLAGS, "--out", str(out), "--workers", "2", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "results.json").read_text())


def test_the_benchmark_runs_and_is_reproducible(tmp_path):
    first = evaluate(tmp_path / "first")
    counts = first["counts"]
    assert counts["references"] > 0 and counts["positives"] > counts["negatives"] > 0
    assert {"global", "seed", "clamped", "margin(beta=0.5)", "normalized(beta=1.0)", "pdq", "phash"} <= set(
        first["rules"]
    )
    for name, result in first["rules"].items():
        assert 0 <= result["recall@p0.999"] <= result["recall@p0.99"] <= 1, name
        assert 0 < result["uap"] <= 1, name
        assert set(result["families"]) >= {"jpeg", "crop50", "text", "sticker", "chain3"}
    # SSCD finds cropped copies; a perceptual hash cannot.
    assert first["rules"]["global"]["families"]["crop50"] > first["rules"]["pdq"]["families"]["crop50"]
    assert first["default_decision"]["rule"] == "margin"
    for name in ("pr.png", "failures.html", "queries.jsonl"):
        assert (tmp_path / "first" / name).stat().st_size > 1000, name

    # The same seed again, a sample of its queries checked: each gets the first run's answer to the last digit.
    evaluate(tmp_path / "second", "--no-baselines", "--sample", str(REPRODUCED_QUERIES))
    first_answers = {identity(row): row for row in rows_of(tmp_path / "first")}
    second_answers = rows_of(tmp_path / "second")
    assert len(second_answers) == REPRODUCED_QUERIES and len(first_answers) > 2 * REPRODUCED_QUERIES
    assert any(row["is_duplicate"] for row in second_answers) and not all(row["is_duplicate"] for row in second_answers)
    for row in second_answers:
        assert row == first_answers[identity(row)], f"{identity(row)} differs between two runs with the same seed"


def identity(row: dict) -> tuple[str, str, str]:
    """What names a query of a run: its family, the picture it was made from and where that comes from."""
    return row["family"], row["source"], row["origin"]


def test_the_evaluation_scores_with_the_services_own_rules(monkeypatch):
    from service.core import decision
    from tools import evaluate

    answer = {"distances": [0.4, 0.5, 0.9], "thresholds": [0.5, 0.4, 0.3], "nearest_similarities": [1.0, 0.97, 0.2],
              "background": 0.2}  # fmt: skip
    query = evaluate.Query("jpeg", "a.jpg", frozenset({"a.jpg"}), "dev", answer=answer)
    candidates = [
        decision.Candidate(0.4, 0.5, 1.0),
        decision.Candidate(0.5, 0.4, 0.97),
        decision.Candidate(0.9, 0.3, 0.2),
    ]
    scores = evaluate.rule_scores(query)
    for name, policy in evaluate.POLICIES.items():
        assert scores[name] == decision.decide(policy, candidates, 0.2).score, name
    # Change one rule in the registry: the evaluation sees it, and nothing else changes.
    monkeypatch.setitem(decision.RULES, "margin", decision.Rule(lambda p, c, b: [42.0] * len(c), lambda p: 0.0))
    changed = evaluate.rule_scores(query)
    assert changed["margin(beta=0.5)"] == changed["margin(beta=1.0)"] == 42.0
    assert changed["global"] == scores["global"]


CATALOGUE_RUN = ["--twin-share", "0.5", "--catalogue", str(ROOT / "tests" / "images"), "--catalogue-groups", "4",
                 "--catalogue-queries", "1", "--catalogue-negatives", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def catalogue_run(tmp_path_factory) -> tuple[Path, dict]:
    """One evaluation with a catalogue and twins (its output folder and results), for the tests that read it."""
    out = tmp_path_factory.mktemp("catalogue-run")
    return out, evaluate(out, "--no-baselines", *CATALOGUE_RUN)


def test_a_catalogue_and_twins_are_enrolled_and_reported_apart(catalogue_run):
    _, result = catalogue_run
    counts = result["counts"]
    assert counts["twins"] > 0 and counts["catalogue_groups"] == 4 and counts["catalogue_negative_drawings"] == 2
    assert counts["enrolled"] == counts["references"] + counts["twins"] + counts["catalogue_files"]
    decision = result["default_decision"]
    assert {"inset", "thumbnail"} <= set(decision["families"])
    for part in ("enrolled_once", "enrolled_more_than_once", "dev", "catalogue"):
        assert 0 <= decision[part]["recall"] <= 1 and decision[part]["positives"] > 0, part
    # Every copy not found is counted once where it was lost.
    assert sum(decision["missed"].values()) == round(decision["positives"] * (1 - decision["recall"]))


def test_a_run_rescored_on_changed_labels_counts_the_new_right_answers(catalogue_run, tmp_path, monkeypatch):
    """tools/rescore.py: on the labels the run had, its report comes back as it was; once the labels
    say an unenrolled drawing shows an enrolled one, that drawing's queries expect it."""
    from tools import rescore
    from tools.evaluate import add_benchmark_arguments
    from tools.evaluation import dataset

    run, result = catalogue_run
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    arguments = parser.parse_args(["--images", str(ROOT / "tests" / "images"), *CATALOGUE_RUN])
    report, changed = rescore.rescored(run, arguments)
    assert json.loads(json.dumps(report)) == result["default_decision"] and changed == []

    rows = [json.loads(line) for line in (run / "queries.jsonl").read_text().splitlines()]
    drawing = next(r["source"] for r in rows if r["origin"] == "catalogue" and not r["expected"])
    enrolled = next(r["expected"][0] for r in rows if r["origin"] == "catalogue" and r["expected"])
    labels = tmp_path / "shown_inside.json"
    labels.write_text(json.dumps([*json.loads(dataset.SHOWN_INSIDE.read_text()), [drawing, enrolled]]))
    monkeypatch.setattr(dataset, "SHOWN_INSIDE", labels)
    report, changed = rescore.rescored(run, arguments)
    assert changed and {q.source for q in changed} == {drawing}
    assert all(enrolled in q.expected for q in changed)
    assert sum(r["source"] == drawing for r in rows) == len(changed)
    assert report["positives"] == result["default_decision"]["positives"] + len(changed)


def test_queries_identified_without_their_bytes_are_the_same_queries():
    images = ROOT / "tests" / "images"
    made, named = (build(images, 0, 0.7, 0.1, 0.5, images, 4, 1, 2, with_bytes=bytes_) for bytes_ in (True, False))
    assert [(q.family, q.source, q.expected, q.host, q.copies) for q in made.queries] == [
        (q.family, q.source, q.expected, q.host, q.copies) for q in named.queries
    ]
    assert all(q.data for q in made.queries)
    assert all(not q.data for q in named.queries if q.family not in ("original", "natural"))


def test_an_insets_host_that_shows_an_enrolled_picture_is_a_right_answer():
    """An inset's host is never enrolled itself, but it can be the same picture as an enrolled one
    (a dev stamp drawn from a clipart drawing): the query shows that picture too, whichever picture
    is pasted on it."""
    enrol = {"catalogue/house.jpg": b"", "a.jpg": b""}
    inset = Query("inset", "a.jpg", frozenset({"a.jpg"}), "dev", host="stamp-house.jpg")
    on_the_house = Query("inset", "b.jpg", frozenset(), "dev", host="stamp-house.jpg")
    elsewhere = Query("inset", "c.jpg", frozenset(), "dev", host="stamp-tree.jpg")
    changed = add_same_pictures([inset, on_the_house, elsewhere], enrol, [["catalogue/house.jpg", "stamp-house.jpg"]])
    assert changed == 2
    assert inset.expected == {"a.jpg", "catalogue/house.jpg"} and inset.copies == 2
    assert on_the_house.expected == {"catalogue/house.jpg"} and on_the_house.copies == 1
    assert elsewhere.expected == frozenset()


def test_a_picture_shown_inside_another_is_a_right_answer_for_the_larger_one_only():
    """A sign that holds other signs whole shows each of them (a copy inside a larger picture),
    while a smaller sign does not show the larger one."""
    enrol = {"catalogue/bus.jpg": b"", "catalogue/taxi.jpg": b"", "catalogue/transport.jpg": b""}
    larger = Query("flip", "catalogue/transport2.jpg", frozenset(), "catalogue")
    smaller = Query("crop30", "catalogue/bus2.jpg", frozenset(), "catalogue")
    same = [["catalogue/transport.jpg", "catalogue/transport2.jpg"], ["catalogue/bus.jpg", "catalogue/bus2.jpg"]]
    inside = [["catalogue/transport.jpg", "catalogue/bus.jpg"], ["catalogue/transport.jpg", "catalogue/taxi.jpg"]]
    changed = add_same_pictures([larger, smaller], enrol, same, inside)
    assert changed == 2
    assert larger.expected == {"catalogue/transport.jpg", "catalogue/bus.jpg", "catalogue/taxi.jpg"}
    assert larger.copies == 3
    assert smaller.expected == {"catalogue/bus.jpg"}


def test_a_catalogue_enrolled_once_sends_the_same_queries_with_fewer_right_keys():
    """--catalogue-once enrols only the queried file of each catalogue group: the queries do not
    change, so tools/twin_recall.py can pair them with a run that enrols every file."""
    images = ROOT / "tests" / "images"
    every, once = (build(images, 0, 0.7, 0.1, 0.0, images, 12, 12, 0, only) for only in (False, True))
    assert [(q.family, q.source, q.data) for q in every.queries] == [(q.family, q.source, q.data) for q in once.queries]
    assert every.counts["catalogue_groups_enrolled_more_than_once"] > 0
    assert once.counts["catalogue_groups_enrolled_more_than_once"] == 0
    assert len(once.enrol) == len(every.enrol) - every.counts["catalogue_files"] + once.counts["catalogue_files"]
    fewer = [a.source for a, b in zip(every.queries, once.queries, strict=True) if len(b.expected) < len(a.expected)]
    assert fewer and all(source.startswith("catalogue/") for source in fewer)


def test_compare_runs_sorts_each_query_by_what_differs():
    """tools/compare_runs.py: the same answer, another decision, other keys, or only a number."""

    def row(source: str, declared: str | None, score: float, keys: list[str]) -> dict:
        answer = {"is_duplicate": bool(declared), "declared": declared, "score": score, "residual": None}
        return {"source": source, "family": "jpeg", "keys": keys, "distances": [0.5] * len(keys)} | answer

    first = [
        row("a", "a", 0.6, ["a"]),
        row("b", None, 0.3, ["b"]),
        row("c", "c", 0.7, ["c", "x"]),
        row("d", None, 0.1, ["d"]),
    ]
    second = [
        row("a", "a", 0.6, ["a"]),
        row("b", "b", 0.5, ["b"]),
        row("c", "c", 0.7, ["c", "y"]),
        row("d", None, 0.1001, ["d"]),
    ]
    result = compare_runs.compared(first, second)
    assert result["counts"] == {"same": 1, "decision": 1, "keys": 1, "numbers": 1}
    assert result["largest"]["score"] == pytest.approx(0.2) and [a["source"] for a, _ in result["decisions"]] == ["b"]
    with pytest.raises(ValueError, match="same queries"):
        compare_runs.compared(first, list(reversed(second)))


def test_twin_recall_compares_each_twinned_pictures_copies_with_themselves():
    """tools/twin_recall.py: the same queries in a run without twins and one with them, split by
    whether the second run enrolled the query's picture under more keys; queries that differ are
    refused."""

    def row(source: str, expected: list[str], declared: str | None) -> dict:
        return {"source": source, "family": "jpeg", "expected": expected, "is_duplicate": bool(declared),
                "declared": declared}  # fmt: skip

    once = [row("a.jpg", ["a.jpg"], "a.jpg"), row("b.jpg", ["b.jpg"], None), row("n.jpg", [], None)]
    twice = [
        row("a.jpg", ["a.jpg", "twin/a.jpg"], "twin/a.jpg"),
        row("b.jpg", ["b.jpg", "twin/b.jpg"], "b.jpg"),
        row("n.jpg", [], "a.jpg"),
    ]
    result = paired(once, twice)
    assert result["more keys"] == {"queries": 2, "recall_once": 0.5, "recall_twice": 1.0}
    assert result["as many keys"]["queries"] == 0
    with pytest.raises(ValueError, match="same queries"):
        paired(once, list(reversed(twice)))


def test_the_pdq_signal_counts_a_right_nearest_within_its_bits_as_gained_and_any_other_as_wrong():
    """tools/pdq_signal.py: "declare the nearest record within T bits" gains a copy whose nearest is
    right, makes a wrong answer of a negative or of a copy whose nearest is another picture, and
    leaves declared (distance None) and farther queries alone."""
    from tools.pdq_signal import gained

    def query(family: str, expected: set[str], nearest: str) -> Query:
        return Query(family, "q.jpg", frozenset(expected), "dev", answer={"keys": [nearest]})

    queries = [
        query("jpeg", {"a.jpg"}, "a.jpg"),
        query("noise", {"a.jpg"}, "b.jpg"),
        query("jpeg", set(), "a.jpg"),
        query("blur", {"c.jpg"}, "c.jpg"),
    ]
    distances = [5, 3, 10, None]
    assert gained(queries, distances, 4) == (Counter(), 1)
    assert gained(queries, distances, 5) == (Counter({"jpeg": 1}), 1)
    assert gained(queries, distances, 31) == (Counter({"jpeg": 1}), 2)


def test_the_pdq_signal_measures_every_undeclared_query_of_a_run(catalogue_run):
    """On a real run: a distance for exactly the queries the run did not declare (and not
    near-blank), gains that only grow with the bits allowed, and the tool's table."""
    from tools.evaluate import add_benchmark_arguments, benchmark_of
    from tools.pdq_signal import THRESHOLDS, gained, undeclared_distances
    from tools.rescore import answered

    run, _ = catalogue_run
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    arguments = parser.parse_args(["--images", str(ROOT / "tests" / "images"), *CATALOGUE_RUN])
    benchmark = benchmark_of(arguments)
    queries = answered(benchmark.queries, rows_of(run))
    distances = undeclared_distances(benchmark, queries)
    for query, distance in zip(queries, distances, strict=True):
        answer = query.answer
        undeclared = not answer["is_duplicate"] and not answer["low_information"] and answer["keys"]
        assert (distance is not None) == bool(undeclared)
        assert distance is None or 0 <= distance <= 256
    assert any(distance is not None for distance in distances)
    counted = [sum(copies.values()) + wrong for copies, wrong in (gained(queries, distances, t) for t in THRESHOLDS)]
    assert counted == sorted(counted)

    done = subprocess.run(
        [sys.executable, "-m", "tools.pdq_signal", str(run), "--images", str(ROOT / "tests" / "images"),
         *CATALOGUE_RUN],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")][1:] == [
        str(t) for t in THRESHOLDS
    ]


def test_thumbnail_views_ranks_each_thumbnail_under_each_search(stub):
    """tools/thumbnail_views.py: every thumbnail of an enrolled picture is counted once, in the band
    of its side, and ranked under each search; the smallest rank their picture first among the
    small views; verification confirms most of them. (Hash only: nothing is enrolled in the
    session's service.)"""
    wide = io.BytesIO()
    Image.new("RGB", (300, 20), "red").save(wide, "PNG")
    assert Image.open(io.BytesIO(small_view(wide.getvalue()))).size == (SMALL_SIDE, 8)  # no side under 8 px

    benchmark = build(ROOT / "tests" / "images", 0)
    thumbnails = [query for query in benchmark.queries if query.family == "thumbnail"]
    result = measure(benchmark, stub, workers=2)
    bands = result["bands"]
    assert sum(band["positives"] for band in bands.values()) == sum(query.positive for query in thumbnails)
    assert 0 < result["negatives"] <= sum(not query.positive for query in thumbnails)
    for band in bands.values():
        for name in SEARCHES:
            assert band[name]["first"] <= band[name]["within"] <= band["positives"] - band["refused"]
    smallest = bands["16-23 px"]
    assert smallest["positives"] > 0 and smallest["small"]["first"] == smallest["positives"]
    # Confirmed as a small query is: most copies of their picture, each query at most once.
    positives = sum(band["positives"] for band in bands.values())
    for counts in result["declared"].values():
        assert positives / 2 < counts["copies"] <= len(thumbnails) - counts["wrong"]
