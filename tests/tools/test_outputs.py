"""What the tools write (issue 28): the audit writes its own names and its files appear together;
a folder or file of the user's is replaced only with --force (audit, relabel, export)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

import label_refinery.tools.reports as reports
from label_refinery.cli import main
from label_refinery.locks import LOCK
from label_refinery.tools.audit import AuditSpec, audit_run
from tests.harness import Stop, quiet

AUDIT = ["--crops", "1", "--html-rows", "5", "--device", "cpu", "--no-progress"]
SPEC = AuditSpec(crops_per_image=1, html_rows=5)


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    """A finished 1-generation chain on digits (1 epoch); tests that write into it take a copy."""
    run = tmp_path_factory.mktemp("outputs") / "run"
    assert main(["chain", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--batch-size", "64",
                 "--device", "cpu", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    return run


def files_of(folder):
    """The folder's files and their bytes (not the lock file, which names its last holder)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK}


def test_audit_into_the_run_folder_keeps_the_chains_summary(run1, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run1, run)
    before = files_of(run)
    assert main(["audit", str(run), "--out", str(run), *AUDIT]) == 0
    after = files_of(run)
    assert {k: v for k, v in after.items() if k in before} == before  # summary.json, summary.md, config.yaml kept
    assert sorted(after.keys() - before.keys()) == ["audit-summary.json", "audit.csv", "audit.html", "probs.npy"]
    assert json.loads(after["audit-summary.json"])["images"] == 1438
    assert len(list(csv.DictReader(open(run / "audit.csv")))) == 1438
    assert (run / "audit.html").read_text().count("<tr data-index=") == 5
    assert not list(run.glob(".staging-*"))
    assert main(["chain", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--batch-size", "64",
                 "--device", "cpu", "--no-progress", "--out", str(run)]) == 0  # still a chain: a skip  # fmt: skip
    assert "finished earlier, skipping" in capsys.readouterr().out


def test_audit_into_a_folder_of_ones_own_is_refused_unless_forced(run1, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("{}\n")
    assert main(["audit", str(run1), "--out", str(mine), *AUDIT]) == 2
    err = capsys.readouterr().err
    assert "is not empty and is not a label-refinery audit folder (it holds summary.json): pass another --out, or --force" in err
    assert sorted(files_of(mine)) == ["summary.json"]
    assert main(["audit", str(run1), "--out", str(mine), *AUDIT, "--force"]) == 0
    assert (mine / "summary.json").read_text() == "{}\n"  # the audit's own names only
    assert (mine / "audit-summary.json").is_file() and (mine / "audit.html").is_file()


def test_a_failure_between_the_audits_files_leaves_the_previous_audit_whole(run1, tmp_path, monkeypatch):
    out = tmp_path / "audit"
    audit_run(run1, SPEC, out=out, log=quiet)
    before = files_of(out)

    def html_fails(*args, **kwargs):  # killed after audit.csv, before audit.html
        raise Stop

    monkeypatch.setattr(reports, "audit_html", html_fails)
    other = AuditSpec(crops_per_image=1, html_rows=5, rank="normalized_margin")  # another order of audit.csv
    with pytest.raises(Stop):
        audit_run(run1, other, out=out, log=quiet)
    assert files_of(out) == before and not list(out.glob(".staging-*"))  # the previous four, none half new
    monkeypatch.undo()
    audit_run(run1, other, out=out, log=quiet)
    after = files_of(out)
    assert after["audit.csv"] != before["audit.csv"] and after["audit.html"] != before["audit.html"]  # both new


def test_export_and_relabel_replace_a_file_only_with_force(run1, tmp_path, capsys):
    out = tmp_path / "export.csv"
    out.write_text("my own table\n")
    args = ["export", str(run1), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    assert f"error: {out} exists: pass --force to replace it, or another --out" in capsys.readouterr().err
    assert out.read_text() == "my own table\n"
    assert main(args + ["--force"]) == 0
    assert len(list(csv.DictReader(open(out)))) == 1438
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.csv"]  # no lock or temporary file left

    audit = tmp_path / "audit.csv"
    audit.write_text("index,given,suggested,suggested_p,flag\n5,1,7,0.9,wrong\n6,2,2,0.8,ok\n")
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("index,label\n5,3\n")  # fixes edited by hand
    args = ["relabel", str(audit), "--top", "1", "--out", str(fixes)]
    assert main(args) == 2
    assert f"error: {fixes} exists: pass --force to replace it, or another --out" in capsys.readouterr().err
    assert fixes.read_text() == "index,label\n5,3\n"
    assert main(args + ["--force"]) == 0
    assert [r["label"] for r in csv.DictReader(open(fixes))] == ["7"]
