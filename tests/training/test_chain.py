import csv
import json

import pytest
import yaml

from label_refinery import UserError, load_config, run_chain, train_generation
from label_refinery.data import load_dataset
from label_refinery.files import sha256_file
from tests.harness import assert_same_weights, crash, quiet, rerun, stop_on_log, top1

FAST = {"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_two_generation_chain_files_and_provenance(tmp_path):
    out = tmp_path / "chain"
    rows = run_chain(load_config(overrides={**FAST, "chain.generations": 2}), out, log=lambda _: None)
    assert [r["generation"] for r in rows] == [1, 2]
    assert rows[0]["refinery"] == "ground truth" and rows[1]["refinery"] == "gen1 (cnn-small)"
    for g in (1, 2):
        folder = out / f"gen{g}"
        names = {p.name for p in folder.iterdir()}
        assert {"config.yaml", "metrics.jsonl", "model.safetensors", "meta.json"} <= names
        assert "state.safetensors" not in names  # removed once the generation finished
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1 and {"train_loss", "train_top1_crops", "test_top1", "test_top5"} <= json.loads(lines[0]).keys()
    m1 = json.loads((out / "gen1/meta.json").read_text())
    m2 = json.loads((out / "gen2/meta.json").read_text())
    assert m1["labels"]["kind"] == "ground-truth"
    assert m2["labels"]["kind"] == "live-refinery"
    assert m2["labels"]["sha256"] == m1["sha256"] == sha256_file(out / "gen1/model.safetensors")
    assert m2["labels"]["generation"] == 1 and m2["labels"]["temperature"] == 1.0
    assert m1["dataset_fingerprint"] == m2["dataset_fingerprint"] and len(m1["dataset_fingerprint"]) == 64
    assert m2["config"]["seed"] == 1 and m1["config"]["seed"] == 0
    metrics = m2["metrics"]
    assert abs(metrics["gap"] - (metrics["train_top1_clean"] - metrics["test_top1"])) < 1e-9
    assert (out / "summary.md").read_text().startswith("| gen | model | refinery |")
    assert json.loads((out / "summary.json").read_text()) == rows


def test_rerun_skips_finished_generations(tmp_path):
    out = tmp_path / "chain"
    cfg = load_config(overrides={**FAST, "chain.generations": 2})
    first = run_chain(cfg, out, log=lambda _: None)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("gen*/model.safetensors")}
    messages = []
    rows = run_chain(cfg, out, log=messages.append)
    assert sum("skipping" in m for m in messages) == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("gen*/model.safetensors")} == stamps
    assert len(rows) == 2 and rows == first  # the same table, read back from the finished generations
    # extending the chain trains only the new generation
    messages.clear()
    run_chain(load_config(overrides={**FAST, "chain.generations": 3}), out, log=messages.append)
    assert sum("skipping" in m for m in messages) == 2 and (out / "gen3/meta.json").is_file()


def test_rerun_with_another_config_is_refused(tmp_path):
    out = tmp_path / "chain"
    run_chain(load_config(overrides={**FAST, "chain.generations": 1}), out, log=lambda _: None)
    with pytest.raises(UserError, match="another config.*optim.lr"):
        run_chain(load_config(overrides={**FAST, "chain.generations": 1, "optim.lr": 0.2}), out, log=lambda _: None)


def test_interrupted_generation_resumes_to_identical_weights(tmp_path, digits):
    cfg = load_config(overrides={**FAST, "optim.epochs": 3})

    def train(folder, log):
        return train_generation(cfg, folder, dataset=digits, log=log)

    train(tmp_path / "whole", quiet)
    crash(train, tmp_path / "resumed", stop_on_log("epoch 1/3"))  # after the first epoch
    assert (tmp_path / "resumed/state.safetensors").is_file() and not (tmp_path / "resumed/meta.json").exists()
    _, messages = rerun(train, tmp_path / "resumed")
    assert any("resuming after epoch 1" in m for m in messages)
    assert_same_weights(tmp_path / "whole", tmp_path / "resumed")
    lines = (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


def test_bigger_refinery_then_self_refinement(tmp_path):
    out = tmp_path / "chain"
    cfg = load_config(overrides={**FAST, "chain.generations": 2, "chain.models": ["resnet-cifar:depth=8,width=8", "cnn-small"]})
    rows = run_chain(cfg, out, log=lambda _: None)
    assert [r["model"] for r in rows] == ["resnet-cifar:depth=8,width=8", "cnn-small"]
    assert rows[1]["refinery"] == "gen1 (resnet-cifar:depth=8,width=8)"


def test_chain_from_a_named_refinery(tmp_path, digits):
    first = train_generation(load_config(overrides=FAST), tmp_path / "earlier", dataset=digits, log=lambda _: None)
    cfg = load_config(overrides={**FAST, "chain.generations": 1, "refinery": str(tmp_path / "earlier")})
    rows = run_chain(cfg, tmp_path / "chain", log=lambda _: None)
    meta = json.loads((tmp_path / "chain/gen1/meta.json").read_text())
    assert meta["labels"]["sha256"] == first["sha256"]
    assert rows[0]["refinery"] == f"{tmp_path / 'earlier' / 'model.safetensors'} (cnn-small)"


def test_refined_generation_learns_from_its_refinery(tmp_path, digits):
    """Generation 2 trained on generation 1's labels ends up agreeing with generation 1."""
    cfg = load_config(overrides={**FAST, "optim.epochs": 4, "chain.generations": 2, "data.crop_scale": [0.6, 1.0]})
    rows = run_chain(cfg, tmp_path / "chain", log=lambda _: None)
    assert rows[0]["test_top1"] > 80
    last = json.loads((tmp_path / "chain/gen2/metrics.jsonl").read_text().splitlines()[-1])
    assert last["refined_agreement"] > 75
    assert rows[1]["test_top1"] > 70


def test_retrained_refinery_makes_later_generations_stale(tmp_path, digits):
    first = tmp_path / "g1"
    train_generation(load_config(overrides=FAST), first, dataset=digits, log=lambda _: None)
    refined = load_config(overrides={**FAST, "refinery": str(first)})
    train_generation(refined, tmp_path / "g2", dataset=digits, log=lambda _: None)
    # generation 1 is retrained (another seed): generation 2 must not be silently reused
    import shutil

    shutil.rmtree(first)
    train_generation(load_config(overrides={**FAST, "seed": 5}), first, dataset=digits, log=lambda _: None)
    with pytest.raises(UserError, match="another refinery"):
        train_generation(refined, tmp_path / "g2", dataset=digits, log=lambda _: None)


def test_temperature_never_applies_to_ground_truth(tmp_path, digits):
    a = train_generation(load_config(overrides=FAST), tmp_path / "t1", dataset=digits, log=lambda _: None)
    b = train_generation(load_config(overrides={**FAST, "labels.temperature": 4.0}), tmp_path / "t4", dataset=digits, log=lambda _: None)
    assert a["metrics"]["test_top1"] == b["metrics"]["test_top1"]
    assert_same_weights(tmp_path / "t1", tmp_path / "t4")


def test_too_few_images_for_one_batch(tmp_path):
    cfg = load_config(overrides={**FAST, "data.train_subset": 10, "optim.batch_size": 64})
    with pytest.raises(UserError, match="no batch"):
        train_generation(cfg, tmp_path / "g", log=lambda _: None)


def test_resume_survives_a_cut_metrics_line(tmp_path, digits):
    cfg = load_config(overrides={**FAST, "optim.epochs": 2})

    def train(folder, log):
        return train_generation(cfg, folder, dataset=digits, log=log)

    crash(train, tmp_path / "g", stop_on_log("epoch 1/2"))
    with open(tmp_path / "g/metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "train_lo')  # a crash in the middle of the next line
    meta, _ = rerun(train, tmp_path / "g")
    rows = [json.loads(x) for x in (tmp_path / "g/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and meta["metrics"]["test_top1"] == rows[-1]["test_top1"]


def test_chain_reports_val_top1_every_epoch(tmp_path):
    cfg = load_config(overrides={"data.dataset": "digits", "data.val_split": 300, "optim.epochs": 2, "optim.batch_size": 64,
                                 "chain.generations": 1})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    lines = [json.loads(x) for x in (tmp_path / "c/gen1/metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(round(3 * r["val_top1"], 6) == round(3 * r["val_top1"]) for r in lines)  # k of 300 images
    # the last epoch's val top-1 is the saved model's on the 300 held-out images, computed here
    val = load_dataset("digits", val_split=300).val
    assert lines[-1]["val_top1"] == pytest.approx(top1(tmp_path / "c/gen1", val), abs=1e-9) and lines[-1]["val_top1"] > 50
    assert rows[0]["val_top1"] == lines[-1]["val_top1"]
    assert "| val top-1 |" in (tmp_path / "c/summary.md").read_text()


def test_eval_every_skips_evaluations_but_not_the_last(tmp_path):
    base = {"data.dataset": "digits", "data.val_split": 200, "optim.epochs": 3, "optim.batch_size": 64, "chain.generations": 1}
    rows = run_chain(load_config(overrides={**base, "eval_every": 2}), tmp_path / "c", log=lambda _: None)
    lines = [json.loads(x) for x in (tmp_path / "c/gen1/metrics.jsonl").read_text().splitlines()]
    assert ["test_top1" in r for r in lines] == [False, True, True]  # after epoch 2, and after the last
    assert ["val_top1" in r for r in lines] == [False, True, True]
    assert rows[0]["test_top1"] == lines[-1]["test_top1"]
    # the evaluation frequency does not change training: a run may resume with another eval_every
    assert run_chain(load_config(overrides=base), tmp_path / "c", log=lambda _: None) == rows


def test_runs_made_before_a_config_key_existed_still_resume(tmp_path):
    """A saved config.yaml without a key added later (e.g. data.val_split) counts as that key's default."""
    cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "chain.generations": 1})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    for path in (tmp_path / "c/config.yaml", tmp_path / "c/gen1/config.yaml"):
        saved = yaml.safe_load(path.read_text())
        del saved["data"]["val_split"], saved["eval_every"]
        path.write_text(yaml.safe_dump(saved))
    assert run_chain(cfg, tmp_path / "c", log=lambda _: None) == rows  # skipped as finished, not refused
    with pytest.raises(UserError, match="another config"):
        run_chain(load_config(overrides={"data.dataset": "digits", "optim.epochs": 1, "optim.batch_size": 64, "data.val_split": 100}),
                  tmp_path / "c", log=lambda _: None)


def test_noisy_run_records_its_flips_and_refined_generations_take_their_own_epochs(tmp_path):
    cfg = load_config(overrides={"data.dataset": "digits", "data.label_noise": 0.2, "optim.epochs": 1,
                                 "chain.generations": 2, "chain.refined_epochs": 3, "device": "cpu"})
    rows = run_chain(cfg, tmp_path / "c", log=lambda _: None)
    assert len(rows) == 2
    for gen, epochs in (("gen1", 1), ("gen2", 3)):
        lines = (tmp_path / "c" / gen / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == epochs
        assert json.loads((tmp_path / "c" / gen / "meta.json").read_text())["config"]["optim"]["epochs"] == epochs
        with open(tmp_path / "c" / gen / "label-noise.csv") as f:
            flips = list(csv.DictReader(f))
        assert len(flips) == round(0.2 * 1438) and all(r["original"] != r["given"] for r in flips)
