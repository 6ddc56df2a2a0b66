"""An audit handed to the tools data teams review labels in: ``label-refinery export RUN --format
fiftyone|label-studio`` (and back: ``label-refinery relabel REVIEWED --reviewed``, relabel.py).

    label-refinery audit runs/fmnist --folds 5
    label-refinery export runs/fmnist --format fiftyone --out review-fo        # every image, most suspicious first
    label-refinery export runs/fmnist --format label-studio --out review-ls    # the flagged images, a review queue

**FiftyOne**: a folder in FiftyOne's ``LegacyFiftyOneDataset`` format (``samples.json``: one sample
dict per image, as ``fiftyone.Sample.from_dict`` reads it; ``metadata.json``: media type and info),
loaded with ``fo.Dataset.from_dir(OUT, dataset_type=fo.types.LegacyFiftyOneDataset)``. Each sample:
``filepath``, ``tags`` (its flag), ``index`` and ``rank`` in the audit, ``given`` and ``suggested``
(``Classification``; ``suggested.confidence`` its probability, ``suggested.logits`` the log of every
class's probability, in ``info.classes`` order), ``flag``, ``log_margin``, ``self_confidence``, ``normalized_margin``,
``entropy``, ``crop_disagreement`` and ``issue``. The reviewer tags a sample ``accept`` (the suggestion
is right) or sets a ``label`` string field to the right class; exported again in the same format, its
``samples.json`` comes back through ``relabel --reviewed``.

**Label Studio**: ``tasks.json`` (one task per image: ``data.image`` a URL Label Studio serves, ``data``
also ``index``, ``given``, ``flag``, ``rank``; the suggestion as a *prediction*, so it shows pre-selected
with its score) and ``config.xml`` (the labeling interface: the image, the given label and flag, one
choice per class). Import ``tasks.json`` into a project whose labeling config is ``config.xml``; images
are served as local files (start Label Studio with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to ``--image-root``, default ``/``). Its JSON or CSV
export comes back through ``relabel --reviewed``.

Images that are not files on disk (in-memory datasets, shards, Hugging Face datasets) are written as
PNGs of their evaluation view under ``OUT/data/``; image-folder and manifest images are referenced
where they are.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import UserError, brief
from ..files import read_csv, write_json
from .probe import load_run, to_pictures

FORMATS = ("fiftyone", "label-studio")
SCORES = ("log_margin", "self_confidence", "normalized_margin", "entropy", "crop_disagreement", "aum", "forgotten",
          "duplicate_sim", "test_duplicate_sim", "outlier_score")
PREDICTION = "label-refinery audit"


def _audit_rows(audit: Path) -> list[dict]:
    """audit.csv's rows in its order (most suspicious first)."""
    fix = f": run `label-refinery audit` first (it writes {audit}/audit.csv and probs.npy)"
    if not (audit / "audit.csv").is_file() or not (audit / "probs.npy").is_file():
        raise UserError(f"{audit} holds no audit{fix}")
    return [row for _, row in read_csv(audit / "audit.csv", "audit table", ["index", "given", "suggested", "flag"], fix)]


def _chosen(rows: list[dict], fmt: str, top: int | None) -> list[dict]:
    """``top``: the first ``top`` rows; default: every row (FiftyOne), the rows not flagged ok (Label Studio)."""
    if top is not None:
        if top < 1:
            raise UserError(f"--top must be at least 1, got {top}")
        return rows[:top]
    return rows if fmt == "fiftyone" else [r for r in rows if r["flag"] != "ok"]


def _images(ds, positions: list[int], out: Path) -> list[str]:
    """A file for each image: its own path where it is a file, else a PNG of its evaluation view in ``out/data``."""
    from PIL import Image

    paths = [ds.train.path(p) for p in positions]
    missing = [j for j, p in enumerate(paths) if not (p and Path(p).is_file())]
    paths = [str(Path(p).resolve()) if p else p for p in paths]
    if missing:
        (out / "data").mkdir(parents=True, exist_ok=True)
        sub = ds.train.subset([positions[j] for j in missing])
        start = 0
        for batch in sub.iter_batches(256):
            for img, j in zip(to_pictures(batch.images, ds), missing[start:]):
                name = f"data/{int(ds.train.ids[positions[j]]):08d}.png"
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out / name)
                paths[j] = name  # relative to the export folder
            start += len(batch.indices)
    return paths


def _number(row: dict, key: str):
    value = row.get(key, "")
    return None if value == "" else float(value)


def _sample(row: dict, path: str, p: np.ndarray) -> dict:
    """One FiftyOne sample dict (``fiftyone.Sample.from_dict``'s input)."""
    logits = [math.log(max(float(v), 1e-12)) for v in p]
    sample = {
        "filepath": path,
        "tags": [row["flag"]],
        "index": int(row["index"]),
        "rank": int(row.get("rank") or 0),
        "given": {"_cls": "Classification", "label": row["given"]},
        "suggested": {"_cls": "Classification", "label": row["suggested"],
                      "confidence": _number(row, "suggested_p"), "logits": logits},  # fmt: skip
        "flag": row["flag"],
        "issue": str(row.get("issue", "")).lower() == "true",
    }
    return sample | {k: _number(row, k) for k in SCORES if k in row}


def _task(row: dict, url: str) -> dict:
    """One Label Studio task: the image and what the audit knows, the suggestion as a prediction."""
    score = _number(row, "suggested_p")
    result = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [row["suggested"]]}}
    data = {"image": url, "index": int(row["index"]), "given": row["given"], "flag": row["flag"],
            "rank": int(row.get("rank") or 0), "suggested": row["suggested"]}  # fmt: skip
    return {"data": data, "predictions": [{"model_version": PREDICTION, "score": score, "result": [result]}]}


def label_studio_config(classes: list[str]) -> str:
    """The labeling interface: the image, its given label and flag, one single choice per class."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <Header value="given: $given   audit flag: $flag (rank $rank)"/>\n'
        '  <Choices name="label" toName="image" choice="single-radio" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def _url(path: str, out: Path, image_root: str) -> str:
    """The local-files URL Label Studio serves ``path`` under (relative to its document root)."""
    full = (out / path).resolve() if not Path(path).is_absolute() else Path(path)
    root = Path(image_root).resolve()
    try:
        rel = full.relative_to(root)
    except ValueError:
        raise UserError(f"image {full} is outside --image-root {root}: pass a root above it") from None
    return "/data/local-files/?d=" + rel.as_posix()


def export_audit(
    run: str | Path,
    out: str | Path,
    *,
    fmt: str,
    audit: str | Path | None = None,
    top: int | None = None,
    image_root: str = "/",
    force: bool = False,
) -> int:
    """Write ``run``'s audit (default ``RUN/audit``) as a FiftyOne or Label Studio folder ``out`` (module
    docstring); returns how many images it holds. ``out`` is replaced only with ``force``."""
    if fmt not in FORMATS:
        raise UserError(f"a review export is {' or '.join(FORMATS)}, not {brief(fmt)}")
    audit, out = Path(audit) if audit else Path(run) / "audit", Path(out)
    rows = _chosen(_audit_rows(audit), fmt, top)
    if not rows:
        raise UserError(f"{audit}/audit.csv flags no image: pass --top N to export the first N rows anyway")
    _, _, ds, _ = load_run(run, "cpu")
    probs = np.load(audit / "probs.npy", mmap_mode="r")
    position = {int(i): p for p, i in enumerate(ds.train.ids.tolist())}
    unknown = [r["index"] for r in rows if int(r["index"]) not in position]
    if unknown or probs.shape != (len(ds.train), ds.num_classes):
        raise UserError(f"{audit} is not an audit of {run} (image {unknown[0] if unknown else '?'} or its shape differs)")
    if out.exists() and not (force and ((out / "samples.json").is_file() or (out / "tasks.json").is_file())):
        raise UserError(f"{out} exists: pass --force to replace an export, or another --out")
    part = out.with_name(f".{out.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    positions = [position[int(r["index"])] for r in rows]
    final = _images(ds, positions, part)
    if fmt == "fiftyone":
        samples = [_sample(r, path, probs[pos]) for r, path, pos in zip(rows, final, positions)]
        write_json(part / "samples.json", {"samples": samples})
        write_json(part / "metadata.json", {"name": out.name, "media_type": "image",
                                           "info": {"classes": ds.classes, "source": f"label-refinery audit of {run}"}})  # fmt: skip
    else:
        tasks = [_task(r, _url(path, out, image_root)) for r, path in zip(rows, final)]
        (part / "tasks.json").write_text(json.dumps(tasks, indent=1))
        (part / "config.xml").write_text(label_studio_config(ds.classes))
    if out.exists():
        shutil.rmtree(out)
    part.replace(out)
    return len(rows)


__all__ = ["FORMATS", "export_audit", "label_studio_config"]
