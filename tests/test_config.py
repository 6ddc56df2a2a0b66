import pytest

from label_refinery import UserError, load_config
from label_refinery.config import refinery_paths, save_config, to_dict


def test_defaults_are_the_papers_label_settings():
    cfg = load_config()
    assert cfg.loss.temperature == 1.0 and cfg.loss.gt_weight == 0.0
    assert not cfg.refinery.bn_train


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: resnet-cifar\noptim: {epochs: 4, lr: 0.2}\ndata: {crop_scale: [0.1, 0.9]}\n")
    cfg = load_config(p, {"optim.lr": 0.3, "chain.models": "a,b", "chain.generations": "2"})
    assert cfg.model == "resnet-cifar" and cfg.optim.epochs == 4 and cfg.optim.lr == 0.3
    assert cfg.data.crop_scale == (0.1, 0.9) and cfg.chain.models == ("a", "b") and cfg.chain.generations == 2


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(overrides={"optim.milestones": [3, 6], "optim.schedule": "step", "optim.epochs": 9})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert to_dict(cfg)["optim"]["milestones"] == [3, 6]


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        ({"optim.nope": 1}, "unknown config key optim.nope; valid keys: .*optim.lr"),
        ({"nope": 1}, "unknown config key nope"),
        ({"optim.epochs": 0}, "optim.epochs must be >= 1"),
        ({"optim.epochs": "ten"}, "optim.epochs: expected an integer"),
        ({"data.crop_scale": [0.9, 0.1]}, "crop_scale"),
        ({"loss.gt_weight": 2}, "loss.gt_weight must be in"),
        ({"optim.schedule": "linear"}, "cosine, step or constant"),
        ({"chain.models": "a,b", "chain.generations": 3}, "one per generation"),
        ({"data.flip": "maybe"}, "true/false"),
    ],
)
def test_bad_values_name_the_key(overrides, phrase):
    with pytest.raises(UserError, match=phrase):
        load_config(overrides=overrides)


def test_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(p)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_fractions_for_pixel_amounts():
    assert load_config(overrides={"jitter.eps": "2/255"}).jitter.eps == pytest.approx(2 / 255)
    with pytest.raises(UserError, match="2/255"):
        load_config(overrides={"jitter.eps": "2/0"})


def test_one_refinery_stays_a_string_and_several_are_a_tuple():
    assert load_config(overrides={"refinery.path": ["a"]}).refinery.path == "a"  # `--refinery a`: as before
    cfg = load_config(overrides={"refinery.path": ["a", "b"]})
    assert cfg.refinery.path == ("a", "b") and refinery_paths(cfg) == ("a", "b")
    assert refinery_paths(load_config()) == ()
    with pytest.raises(UserError, match="named twice"):
        load_config(overrides={"refinery": ["a", "a"]})


def test_set_none_clears_an_optional_key():
    from label_refinery import load_config

    assert load_config(overrides={"data.image_size": 24}).data.image_size == 24
    cfg = load_config(overrides={"refinery.path": "none", "data.image_size": "null"})
    assert cfg.refinery.path is None and cfg.data.image_size is None


def test_a_config_file_can_start_from_another(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/base.yaml").write_text("model: vgg-small\noptim: {epochs: 7, lr: 0.2}\nlabels: {temperature: 2}\n")
    (tmp_path / "child.yaml").write_text("base: recipes/base.yaml\noptim: {lr: 0.01}\n")
    cfg = load_config(tmp_path / "child.yaml", overrides={"data.dataset": "digits"})
    # the base's keys (its legacy `labels.temperature` upgraded too), the child's change, the overrides last
    assert (cfg.model, cfg.optim.epochs, cfg.optim.lr, cfg.loss.temperature) == ("vgg-small", 7, 0.01, 2.0)
    (tmp_path / "recipes/base.yaml").write_text("base: ../child.yaml\n")
    with pytest.raises(UserError, match="its base files form a loop"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "child.yaml").write_text("base: [a, b]\n")
    with pytest.raises(UserError, match="base names another file"):
        load_config(tmp_path / "child.yaml")
