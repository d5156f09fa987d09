"""The benchmark's human-readable outputs: the precision-recall plot and the worst failures page."""

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def thumbnail(data: bytes) -> str:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((160, 160))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def write_failures(path: Path, enrolled: dict, queries: list, scores: list[float], correct, rule: str) -> None:
    """The worst misses and false alarms with thumbnails; `enrolled` maps keys to files or bytes."""
    order = np.argsort(scores)
    missed = [i for i in order if queries[i].expected and not correct[i]][:15]
    alarms = [i for i in order[::-1] if not correct[i]][:15]
    rows = []
    for title, picked in (("Missed copies (lowest scores)", missed), ("False alarms (highest scores)", alarms)):
        rows.append(f"<h2>{title}</h2><table><tr><th>query</th><th>nearest enrolled</th><th>details</th></tr>")
        for i in picked:
            q = queries[i]
            nearest = q.answer["keys"][0] if q.answer["keys"] else None
            source = enrolled.get(nearest)
            data = source if isinstance(source, bytes) else source.read_bytes() if source else b""
            reference = f'<img src="{thumbnail(data)}">' if data else "none"
            expected = ", ".join(sorted(q.expected)) or "nothing"
            rows.append(
                f'<tr><td><img src="{thumbnail(q.data)}"></td><td>{reference}</td><td>{q.family} of {q.source}'
                f"<br>expected {expected}<br>nearest {nearest}<br>{rule} score {scores[i]:.3f}</td></tr>"
            )
        rows.append("</table>")
    path.write_text(f"<html><body><h1>Worst failures of the {rule} rule</h1>{''.join(rows)}</body></html>")


def plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for name, result in results.items():
        axes.plot(result["curve"]["recall"], result["curve"]["precision"], label=f"{name} (µAP {result['uap']:.3f})")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_ylim(0.9, 1.001)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    axes.set_title("Near-duplicate detection on the dev set")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
