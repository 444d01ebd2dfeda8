import pytest

from irkd.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)


def test_defaults_are_valid():
    cfg = load_config(None)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.method.msa.scales == [3, 5, 7]
    assert cfg.method.msa.tau == 0.5
    assert (cfg.method.alpha, cfg.method.beta, cfg.method.lam) == (1.0, 0.5, 1.0)
    assert cfg.teacher is None


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "name: x\nbackend: mindspore\noptim:\n  lr: 1e-3\n  name: sgd\n"
        "method:\n  msa:\n    scales: [3, 5]\n"
    )
    cfg = load_config(p, ["optim.lr=2e-4", "method.msa.fusion=max", "teacher.name=dnanet"])
    assert cfg.backend == "mindspore"
    assert cfg.optim.name == "sgd"
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert isinstance(cfg.optim.lr, float)
    assert cfg.method.msa.scales == [3, 5]
    assert cfg.method.msa.fusion == "max"
    assert cfg.teacher is not None and cfg.teacher.name == "dnanet"


def test_yaml_scientific_notation_is_a_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 5e-4\n  weight_decay: 1.0e-2\n")
    cfg = load_config(p)
    assert cfg.optim.lr == pytest.approx(5e-4)
    assert cfg.optim.weight_decay == pytest.approx(1e-2)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("method.msa.bogus=1", "method.msa.bogus"),
        ("nonsense=1", "nonsense"),
        ("train.graph_mode='true'", "train.graph_mode"),
        ("train.graph_mode=1", "train.graph_mode"),
        ("seed=1.5", "seed"),
        ("backend=jax", "backend"),
        ("method.msa.scales=[4]", "method.msa.scales"),
        ("data.crop=100", "data.crop"),
        ("method.stage_weights=[1.0]", "method.stage_weights"),
        ("optim.lr=-1", "optim.lr"),
        ("method.out_weight=-1", "method.out_weight"),
        ("method.out_weight=.nan", "method.out_weight"),
        ("method.out_weight=true", "method.out_weight"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  rooot: /x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "bad.yaml" in str(exc.value) and "data.rooot" in str(exc.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["optim..lr=1"])


def test_save_roundtrip(tmp_path):
    cfg = apply_overrides(load_config(None), ["method.name=cwd", "method.params={tau: 4.0}"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.method.params == {"tau": 4.0}


def test_every_shipped_config_is_valid():
    from pathlib import Path

    import yaml

    from irkd.study.plan import validate_study
    from irkd.study.spec import load_study

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "configs").rglob("*.yaml"))
    assert len(files) >= 7
    studies = [f for f in files if "datasets" in (yaml.safe_load(f.read_text()) or {})]
    assert studies, "configs/study/ should hold the study of record"
    for f in studies:  # a study file: every run it can have resolves and validates
        validate_study(load_study(f), root / "runs" / "study")
    for f in sorted(set(files) - set(studies)):
        cfg = load_config(f)
        if cfg.method.name not in ("none",) and cfg.teacher is not None:
            assert cfg.teacher.name != cfg.model.name, f
