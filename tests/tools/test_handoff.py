"""The audit handed to FiftyOne and Label Studio, and the reviewers' decisions back through relabel
(issue 27, goal 4). FiftyOne's own importer reads the export back (its parsing: the App's database
is not needed, and does not run here); Label Studio is checked against its documented task, config
and export formats."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from label_refinery import UserError
from label_refinery.cli import main
from label_refinery.tools.handoff import export_audit
from label_refinery.tools.relabel import relabel

CHAIN = ["--dataset", "digits", "--label-noise", "0.1", "--epochs", "8", "--generations", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    run = tmp_path_factory.mktemp("handoff") / "run"
    assert main(["chain", *CHAIN, "--out", str(run)]) == 0
    assert main(["audit", str(run), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(run / "audit/audit.csv")))
    return run, rows


def test_fiftyone_export_reads_back_through_fiftyones_importer(audited, tmp_path, capsys):
    run, rows = audited
    out = tmp_path / "fo"
    assert main(["export", str(run), "--format", "fiftyone", "--out", str(out)]) == 0
    assert "relabel" in capsys.readouterr().out
    samples = json.loads((out / "samples.json").read_text())["samples"]
    meta = json.loads((out / "metadata.json").read_text())
    classes = meta["info"]["classes"]
    assert meta["media_type"] == "image" and len(classes) == 10
    assert [s["index"] for s in samples] == [int(r["index"]) for r in rows]  # every image, the audit's order
    for s, r in zip(samples[:50], rows):
        assert (out / s["filepath"]).is_file()  # digits live in memory: their evaluation views as PNGs
        assert s["given"]["label"] == r["given"] and s["suggested"]["label"] == r["suggested"] and s["tags"] == [r["flag"]]
        p = [math.exp(v) for v in s["suggested"]["logits"]]
        assert sum(p) == pytest.approx(1, abs=1e-3)
        assert classes[max(range(10), key=p.__getitem__)] == r["suggested"]  # the per-class probabilities
        assert s["self_confidence"] == pytest.approx(float(r["self_confidence"]))

    import fiftyone as fo
    from fiftyone.utils.data.importers import LegacyFiftyOneDatasetImporter

    importer = LegacyFiftyOneDatasetImporter(str(out))
    importer.setup()
    read = list(importer)
    assert len(read) == len(rows) and importer.get_dataset_info()["classes"] == classes
    first = read[0]
    assert isinstance(first["suggested"], fo.Classification) and Path(first.filepath).is_file()
    assert first["suggested"].label == rows[0]["suggested"] and first["flag"] == rows[0]["flag"]
    assert len(first["suggested"].logits) == 10

    # the reviewer accepts the first suggestion, writes a label on the second, rejects the third
    changed = [s for s in samples if s["suggested"]["label"] != s["given"]["label"]][:3]
    changed[0]["tags"].append("accept")
    other = next(c for c in classes if c not in (changed[1]["given"]["label"], changed[1]["suggested"]["label"]))
    changed[1]["label"] = {"_cls": "Classification", "label": other}
    changed[2]["tags"].append("reject")
    (out / "samples.json").write_text(json.dumps({"samples": samples}))
    assert relabel(out / "samples.json", tmp_path / "fixes.csv", reviewed=True) == 2
    fixes = list(csv.DictReader(open(tmp_path / "fixes.csv")))
    assert [(int(f["index"]), f["label"]) for f in fixes] == [
        (changed[0]["index"], changed[0]["suggested"]["label"]), (changed[1]["index"], other)]
    assert main(["train", "--dataset", "digits", "--label-overrides", str(tmp_path / "fixes.csv"), "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "retrained")]) == 0  # fmt: skip


def test_label_studio_export_and_its_json_and_csv_exports_back(audited, tmp_path):
    run, rows = audited
    out = tmp_path / "ls"
    n = export_audit(run, out, fmt="label-studio", image_root=str(tmp_path))
    flagged = [r for r in rows if r["flag"] != "ok"]
    assert n == len(flagged) > 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["index"] for t in tasks] == [int(r["index"]) for r in flagged]
    config = ET.fromstring((out / "config.xml").read_text())
    choices = config.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == config.find("Image").get("name") == "image"
    names = [c.get("value") for c in choices.findall("Choice")]
    assert len(names) == 10
    for t, r in zip(tasks, flagged):
        url = t["data"]["image"]
        assert url.startswith("/data/local-files/?d=") and (tmp_path / url.split("?d=", 1)[1]).is_file()
        (pred,) = t["predictions"]
        (res,) = pred["result"]
        assert (res["from_name"], res["to_name"], res["type"]) == ("label", "image", "choices")
        assert res["value"]["choices"] == [r["suggested"]] and r["suggested"] in names
        assert pred["score"] == pytest.approx(float(r["suggested_p"]))
    with pytest.raises(UserError, match="outside --image-root"):
        export_audit(run, tmp_path / "ls2", fmt="label-studio", image_root=str(tmp_path / "elsewhere"))

    # Label Studio's JSON export: the tasks with annotations (a cancelled one counts for nothing)
    def annotated(t, choice, cancelled=False):
        result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
        return t | {"annotations": [{"result": result, "was_cancelled": cancelled}]}

    a, b, c = tasks[:3]
    other = next(x for x in names if x not in (a["data"]["given"], a["data"]["suggested"]))
    export = [annotated(a, other), annotated(b, b["data"]["given"]), annotated(c, c["data"]["suggested"], cancelled=True)]
    (tmp_path / "export.json").write_text(json.dumps(export + tasks[3:]))
    assert relabel(tmp_path / "export.json", tmp_path / "fixes.csv", reviewed=True) == 1
    assert [(int(f["index"]), f["label"], f["source"]) for f in csv.DictReader(open(tmp_path / "fixes.csv"))] == [
        (a["data"]["index"], other, "reviewed (Label Studio)")]

    # ... and its CSV export: the data columns plus one column per control (here `label`)
    with open(tmp_path / "export.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "index", "given", "flag", "rank", "suggested", "id", "label", "annotator"])
        w.writeheader()
        w.writerow(a["data"] | {"id": 1, "label": other, "annotator": 1})
        w.writerow(b["data"] | {"id": 2, "label": b["data"]["given"], "annotator": 1})
    assert relabel(tmp_path / "export.csv", tmp_path / "fixes2.csv", reviewed=True) == 1


def test_review_exports_refuse_bad_input(audited, tmp_path):
    run, _ = audited
    with pytest.raises(UserError, match="run `label-refinery audit` first"):
        export_audit(run / "gen1", tmp_path / "x", fmt="fiftyone", audit=tmp_path)
    export_audit(run, tmp_path / "fo", fmt="fiftyone", top=5)
    assert len(json.loads((tmp_path / "fo/samples.json").read_text())["samples"]) == 5
    with pytest.raises(UserError, match="exists: pass --force"):
        export_audit(run, tmp_path / "fo", fmt="fiftyone", top=5)
    export_audit(run, tmp_path / "fo", fmt="fiftyone", top=3, force=True)
    assert len(json.loads((tmp_path / "fo/samples.json").read_text())["samples"]) == 3
    (tmp_path / "bad.json").write_text('{"rows": []}')
    with pytest.raises(UserError, match="neither a FiftyOne samples.json"):
        relabel(tmp_path / "bad.json", tmp_path / "o.csv", reviewed=True)
    (tmp_path / "bad2.json").write_text('[{"data": {"image": "x"}}]')
    with pytest.raises(UserError, match="data.index and data.given"):
        relabel(tmp_path / "bad2.json", tmp_path / "o.csv", reviewed=True)
