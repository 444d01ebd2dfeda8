"""irkd study: the study file, the plan (grid, dedupe), the report numbers, and whole studies
run as subprocesses (end to end, and killed with SIGKILL then restarted)."""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from irkd.cli import main
from irkd.config import apply_overrides, save_config
from irkd.study.plan import build_plan, config_hash, validate_study
from irkd.study.report import aggregate, format_table, tuning_report
from irkd.study.runner import Options, StudyRunner
from irkd.study.spec import StudyError, load_study

TINY = {
    "seed": 0,
    "backend": "pytorch",
    "data": {"root": None, "synth_n": 12, "crop": 32, "batch_size": 2, "val_fraction": 0.2},
    "optim": {"lr": 0.05},
    "schedule": {"epochs": 2, "steps_per_epoch": 4},
    "train": {"log_every": 2},
}
STUDENT = {
    **TINY,
    "name": "student",
    "model": {"name": "dnanet_xxs"},
    "teacher": {"name": "dnanet_xxs"},
    "method": {"name": "msa_awmse", "stages": ["enc1"], "lam": 1.0},
}
TEACHER = {**TINY, "name": "teacher", "model": {"name": "dnanet_xxs"}, "method": {"name": "none"}}
STUDY = {
    "name": "tiny",
    "threads": 1,
    "datasets": {"syn": {"student": "student.yaml", "teacher": "teacher.yaml"}},
    "seeds": [0, 1],
    "reference": "student",
    "methods": {
        "student": {"overrides": ["method.name=none"]},
        "msa_awmse": {"overrides": ["method.name=msa_awmse"]},
    },
}
ENV = {
    **os.environ,
    "IRKD_TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
}


MORE = {**TEACHER, "name": "more", "optim": {"lr": 1e-7}, "schedule": {"epochs": 1, "min_lr": 0.0}}
"""A second teacher step: the teacher trained further from its best weights."""
STEP2 = {
    **STUDENT,
    "name": "step2",
    "data": {**TINY["data"], "crop": 64},
    "optim": {"lr": 1e-7},
    "schedule": {"epochs": 1, "min_lr": 0.0},
}
"""A second student step: each student trained further, on larger crops."""


def write_study(folder: Path, study: dict | None = None, student: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "student.yaml").write_text(yaml.safe_dump(student or STUDENT))
    (folder / "teacher.yaml").write_text(yaml.safe_dump(TEACHER))
    (folder / "more.yaml").write_text(yaml.safe_dump(MORE))
    (folder / "wide.yaml").write_text(yaml.safe_dump({**MORE, "model": {"name": "dnanet_xs"}}))
    started = {**MORE, "model": {"name": "dnanet_xxs", "checkpoint": "w.safetensors"}}
    (folder / "started.yaml").write_text(yaml.safe_dump(started))
    for name, step in {
        "step2": STEP2,
        "step2_wide": {**STEP2, "model": {"name": "dnanet_xs"}},
        "step2_started": {**STEP2, "model": {"name": "dnanet_xxs", "checkpoint": "w.safetensors"}},
        "step2_teacher": {**STEP2, "teacher": {"name": "dnanet_xs"}},
    }.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(step))
    path = folder / "study.yaml"
    text = study if isinstance(study, str) else yaml.safe_dump(study or STUDY, sort_keys=False)
    path.write_text(text)
    return path


def study_cmd(path: Path, work: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "irkd.cli", "study", str(path),
        "--runs-dir", str(work / "W"), "--results-dir", str(work / "R"), "--cache", str(cache),
        *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- the study file


def _with(**changes):
    study = json.loads(json.dumps(STUDY))
    for dotted, value in changes.items():
        node = study
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return study


TEACHERLESS = "method.name=msa_awmse distills but the dataset has no teacher config"
BAD = [
    (_with(bogus=1), "bogus: unknown key"),
    ("name: a\nname: b\n", "duplicate key 'name' at line 2"),
    (_with(seeds=["a"]), "seeds[0]: expected an integer"),
    (_with(seeds=[0, 0]), "seeds: repeated seed"),
    (_with(name="a b"), "name: 'a b' is not a valid name"),
    (_with(datasets__syn__student="no.yaml"), "datasets.syn.student: config file no.yaml not"),
    (_with(datasets__syn__extra=1), "datasets.syn.extra: unknown key"),
    (_with(datasets__syn__overrides=["data.crop=33"]), "datasets.syn.overrides:"),
    (
        _with(methods__fitnet={"overrides": ["method.nope=1"]}),
        "methods.fitnet.overrides (dataset syn): unknown key method.nope",
    ),
    (
        _with(methods__x={"overrides": ["method.name=magic"]}),
        "methods.x.overrides (dataset syn): method.name: unknown method 'magic'",
    ),
    (
        _with(methods__x={"overrides": ["method.name=cwd", "method.params={bad: 1}"]}),
        "methods.x.overrides (dataset syn): method: unknown parameter 'bad'",
    ),
    (_with(methods__x={"overrides": ["oops"]}), "methods.x.overrides[0]: 'oops' must look like"),
    (_with(methods__x={"datasets": ["nudt"]}), "methods.x.datasets: unknown dataset 'nudt'"),
    (_with(reference="fitnet"), "reference: 'fitnet' is not a methods row"),
    (_with(tuning={"fitnet": {"grid": {"method.lam": [1]}}}), "tuning.fitnet: no such row"),
    (
        _with(tuning={"msa_awmse": {"grid": {"method.lam": []}}}),
        "tuning.msa_awmse.grid.method.lam: expected a non-empty list",
    ),
    (
        _with(tuning={"msa_awmse": {"grid": {"method.lamb": [1]}}}),
        "tuning.msa_awmse.grid (dataset syn): unknown key method.lamb",
    ),
    (
        _with(ablations={"x": {"overrides": [], "tuned": "msa_awmse"}}),
        "ablations.x.tuned: the study has no tuning section",
    ),
    (_with(ablations={"student": {}}), "ablations.student: a methods row has the same name"),
    (
        _with(datasets__syn__teacher=KeyError),
        f"methods.msa_awmse.overrides (dataset syn): {TEACHERLESS}",
    ),
    (_with(datasets__syn__teacher=[]), "datasets.syn.teacher: expected a config path or a"),
    (
        _with(datasets__syn__teacher=["teacher.yaml", "no.yaml"]),
        "datasets.syn.teacher[1]: config file no.yaml not found",
    ),
    (
        _with(datasets__syn__teacher=["teacher.yaml", "student.yaml"]),
        "student.yaml distills (msa_awmse); a teacher trains alone",
    ),
    (
        _with(datasets__syn__teacher=["teacher.yaml", "wide.yaml"]),
        "datasets.syn.teacher[1]: trains dnanet_xs , the step before it dnanet_xxs",
    ),
    (
        _with(datasets__syn__teacher=["teacher.yaml", "started.yaml"]),
        "datasets.syn.teacher[1]: sets model.checkpoint (w.safetensors); a later teacher",
    ),
    (_with(datasets__syn__student=[]), "datasets.syn.student: expected a config path or a"),
    (
        _with(datasets__syn__student=["student.yaml", "no.yaml"]),
        "datasets.syn.student[1]: config file no.yaml not found",
    ),
    (
        _with(datasets__syn__student=["student.yaml", "step2_wide.yaml"]),
        "datasets.syn.student[1]: trains dnanet_xs , the first step dnanet_xxs",
    ),
    (
        _with(datasets__syn__student=["student.yaml", "step2_started.yaml"]),
        "datasets.syn.student[1]: sets model.checkpoint (w.safetensors); a later student",
    ),
    (
        _with(datasets__syn__student=["student.yaml", "step2_teacher.yaml"]),
        "datasets.syn.student[1]: names another teacher network than the first step",
    ),
    (
        _with(datasets__syn__student=["student.yaml", {"overrides": []}]),
        "datasets.syn.student[1].config: missing (the step's base config)",
    ),
    (
        _with(datasets__syn__student=["student.yaml", {"config": "step2.yaml", "x": 1}]),
        "datasets.syn.student[1].x: unknown key; valid keys: config, overrides",
    ),
    (
        _with(
            datasets__syn__student=[
                "student.yaml",
                {"config": "step2.yaml", "overrides": ["method.nope=1"]},
            ]
        ),
        "datasets.syn.student[1].overrides: unknown key method.nope",
    ),
    (
        _with(
            datasets__syn__student=["student.yaml", "step2.yaml"],
            methods__x={"overrides": ["method.name=fitnet", "method.stages=[enc9]"]},
        ),
        "methods.x.overrides (dataset syn): method.stages: unknown stage 'enc9'",
    ),
]


@pytest.mark.parametrize(("study", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_study_file_errors_are_one_line_naming_the_key(tmp_path, study, message):
    path = write_study(tmp_path, study)
    with pytest.raises(StudyError) as exc:
        validate_study(load_study(path), tmp_path / "W")
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text


def test_teacher_mismatch_and_cli_exit_2_before_anything_starts(tmp_path, capsys):
    student = {**STUDENT, "teacher": {"name": "dnanet_s"}}
    path = write_study(tmp_path, student=student)
    rc = main(
        [
            "study",
            str(path),
            "--runs-dir",
            str(tmp_path / "W"),
            "--results-dir",
            str(tmp_path / "R"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "methods.msa_awmse.overrides (dataset syn): teacher.name" in err
    assert "dnanet_s" in err and "dnanet_xxs" in err
    assert not (tmp_path / "W").exists() and not (tmp_path / "R").exists()
    rc = main(["study", str(tmp_path / "missing.yaml")])
    assert rc == 2 and "study file not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the plan


def test_grid_expansion_winner_and_shared_runs(tmp_path):
    grid = {"method.lam": [0.5, 2.0], "method.stages": ["[enc1]", "[dec0]"]}
    spec = _with(
        tuning={"seed": 0, "msa_awmse": {"grid": grid}},
        ablations={"msa_off": {"overrides": ["method.msa.enabled=false"], "tuned": "msa_awmse"}},
    )
    study = load_study(write_study(tmp_path, spec))
    root = tmp_path / "W" / "tiny"
    plan = validate_study(study, root)
    teacher = plan.teachers["syn"]
    entry = plan.tuning[("syn", "msa_awmse")]
    assert entry.combos == [
        ("method.lam=0.5", "method.stages=[enc1]"),
        ("method.lam=0.5", "method.stages=[dec0]"),
        ("method.lam=2.0", "method.stages=[enc1]"),
        ("method.lam=2.0", "method.stages=[dec0]"),
    ]
    assert entry.runs[1].startswith("syn-tune-msa_awmse-lam0.5-stages_dec0-s0-")
    assert list(plan.runs) == [teacher, *entry.runs, plan.cells[("syn", "methods", "student", 0)],
                               plan.cells[("syn", "methods", "student", 1)]]  # fmt: skip
    tuned = (("methods", "msa_awmse"), ("ablations", "msa_off"))
    assert sorted(plan.waiting()) == sorted(("syn", t, r, s) for t, r in tuned for s in (0, 1))
    tune = plan.runs[entry.runs[1]].cfg
    assert tune.seed == 0 and tune.method.lam == 0.5 and tune.method.stages == ["dec0"]
    assert tune.teacher.checkpoint == str(root / teacher / "best.safetensors")
    assert plan.runs[plan.cells[("syn", "methods", "student", 0)]].cfg.teacher is None
    assert plan.runs[plan.cells[("syn", "methods", "student", 1)]].mode == "train"

    # not every combination done: the tuned rows still wait
    vals = {teacher: 0.3, entry.runs[0]: 0.2, entry.runs[1]: 0.6, entry.runs[2]: 0.6}
    assert build_plan(study, root, vals).tuning[("syn", "msa_awmse")].winner is None
    # all done: the highest validation IoU wins, the first one on ties
    plan = build_plan(study, root, {**vals, entry.runs[3]: None})
    assert plan.tuning[("syn", "msa_awmse")].winner == 1 and not plan.waiting()
    main0 = plan.cells[("syn", "methods", "msa_awmse", 0)]
    assert main0 == entry.runs[1]  # the seed-0 main run IS the winning tuning run (shared)
    assert plan.runs[main0].roles == ["tuning/msa_awmse/1", "methods/msa_awmse/s0"]
    main1 = plan.runs[plan.cells[("syn", "methods", "msa_awmse", 1)]]
    assert main1.id.startswith("syn-msa_awmse-s1-") and main1.cfg.seed == 1
    assert (main1.cfg.method.lam, main1.cfg.method.stages) == (0.5, ["dec0"])
    off = plan.runs[plan.cells[("syn", "ablations", "msa_off", 0)]].cfg
    assert (off.method.lam, off.method.stages, off.method.msa.enabled) == (0.5, ["dec0"], False)
    # ids do not depend on where the runs live, nor on fields left at their default
    other = build_plan(study, tmp_path / "elsewhere", {**vals, entry.runs[3]: None})
    assert list(other.runs) == list(plan.runs)
    cfg = plan.runs[main0].cfg
    same = apply_overrides(cfg, ["method.msa.tau=0.5", "name=other", "train.graph_mode=true"])
    assert config_hash(same, teacher) == config_hash(cfg, teacher) == main0.rsplit("-", 1)[1]
    assert config_hash(apply_overrides(cfg, ["method.msa.tau=0.25"]), teacher) not in main0


def test_a_teacher_in_steps_starts_each_step_from_the_last_and_distils_from_the_final(tmp_path):
    one = validate_study(load_study(write_study(tmp_path / "one")), tmp_path / "W")
    path = write_study(tmp_path, _with(datasets__syn__teacher=["teacher.yaml", "more.yaml"]))
    study = load_study(path)
    root = tmp_path / "W" / "tiny"
    plan = validate_study(study, root)
    first, final = list(plan.runs)[:2]
    # the first step is the one-step study's teacher, same id: its run folder can be shared
    assert first == one.teachers["syn"] and first.startswith("syn-teacher-")
    assert final.startswith("syn-teacher2-") and plan.teachers["syn"] == final
    assert plan.runs[first].roles == ["teacher/step1"] and plan.runs[final].roles == ["teacher"]
    step2 = plan.runs[final]
    assert step2.mode == "train" and step2.init == first and step2.teacher is None
    assert step2.cfg.model.checkpoint == str(root / first / "best.safetensors")
    assert (step2.cfg.optim.lr, step2.cfg.schedule.epochs) == (1e-7, 1)
    assert plan.runs[first].cfg.model.checkpoint is None and plan.runs[first].teacher is None
    d0 = plan.runs[plan.cells[("syn", "methods", "msa_awmse", 0)]]
    assert d0.teacher == final and d0.cfg.teacher.checkpoint == str(
        root / final / "best.safetensors"
    )
    # ids do not depend on where the runs live; they do on the step before
    assert list(validate_study(study, tmp_path / "elsewhere").runs) == list(plan.runs)
    assert config_hash(step2.cfg, None, first) == final.rsplit("-", 1)[1]
    assert config_hash(step2.cfg, None, "syn-teacher-00000000") not in final

    # the runner: step 2 waits on step 1, whose weights stay needed until step 2 is done
    runner = StudyRunner(study, Options(runs_dir=tmp_path / "W", results_dir=tmp_path / "R"))
    lines = {line.split()[0]: line for line in runner.describe()}
    assert f"waiting on step {first}" in lines[final] and "pending" in lines[first]
    assert f"waiting on teacher {final}" in lines[d0.id]
    (root / first).mkdir(parents=True)
    (root / first / "metrics.json").write_text(json.dumps({"best_val": 0.1, "last": {}}))
    assert runner.needs_weights(first, runner.plan)
    (root / first / "best.safetensors").write_bytes(b"x")
    lines = {line.split()[0]: line for line in runner.describe()}
    assert lines[first].split()[2] == "done" and "pending" in lines[final]


def test_students_in_steps_start_each_step_from_the_last_and_learn_from_the_same_teacher_step(
    tmp_path,
):
    steps2 = ["teacher.yaml", "more.yaml"]
    # the first student steps are the runs of the study with one-step students and teacher
    one = validate_study(load_study(write_study(tmp_path / "one")), tmp_path / "W")
    path = write_study(
        tmp_path,
        _with(datasets__syn__teacher=steps2, datasets__syn__student=["student.yaml", "step2.yaml"]),
    )
    study = load_study(path)
    root = tmp_path / "W" / "tiny"
    plan = validate_study(study, root)
    t1, t2 = plan.runs[plan.teachers["syn"]].init, plan.teachers["syn"]
    assert t1 == one.teachers["syn"]
    for row in ("student", "msa_awmse"):
        for seed in (0, 1):
            final = plan.runs[plan.cells[("syn", "methods", row, seed)]]
            first = plan.runs[str(final.init)]
            assert first.id == one.cells[("syn", "methods", row, seed)]
            assert first.roles == [f"methods/{row}/s{seed}/step1"]
            assert final.roles == [f"methods/{row}/s{seed}"]
            assert final.label == f"syn-{row}-s{seed}-step2" and final.cfg.seed == seed
            assert final.cfg.model.checkpoint == str(root / first.id / "best.safetensors")
            assert first.cfg.model.checkpoint is None and first.init is None
            assert (final.cfg.data.crop, final.cfg.optim.lr) == (64, 1e-7)
            assert (first.cfg.data.crop, first.cfg.optim.lr) == (32, 0.05)
            if row == "student":
                assert final.teacher is first.teacher is None and final.needs == (first.id,)
                continue
            assert (first.teacher, final.teacher) == (t1, t2)
            assert final.cfg.teacher.checkpoint == str(root / t2 / "best.safetensors")
            assert final.cfg.method.name == "msa_awmse" and final.needs == (first.id, t2)
            assert config_hash(final.cfg, t2, first.id) == final.id.rsplit("-", 1)[1]
            assert config_hash(final.cfg, t2, "syn-x-00000000") not in final.id
    # a step's own overrides come after the row's: distilled at step 1, trained alone at 2
    alone = {"config": "step2.yaml", "overrides": ["method.name=none"]}
    tuned = validate_study(
        load_study(
            write_study(
                tmp_path / "alone",
                _with(
                    datasets__syn__teacher=steps2, datasets__syn__student=["student.yaml", alone]
                ),
            )
        ),
        root,
    )
    for seed in (0, 1):
        cell = ("syn", "methods", "msa_awmse", seed)
        final = tuned.runs[tuned.cells[cell]]
        assert final.init == plan.runs[plan.cells[cell]].init  # the same distilled step 1
        assert final.mode == "train" and final.cfg.method.name == "none"
        assert final.teacher is None and final.cfg.teacher is None and final.needs == (final.init,)
        assert final.cfg.data.crop == 64 and final.id not in plan.runs
        cell = ("syn", "methods", "student", seed)
        assert tuned.cells[cell] == plan.cells[cell]  # nothing changes for the student alone
    # with a one-step teacher, every student step learns from it
    flat = validate_study(
        load_study(
            write_study(
                tmp_path / "flat", _with(datasets__syn__student=["student.yaml", "step2.yaml"])
            )
        ),
        root,
    )
    d0 = flat.runs[flat.cells[("syn", "methods", "msa_awmse", 0)]]
    assert d0.teacher == flat.runs[str(d0.init)].teacher == flat.teachers["syn"]

    # the runner: step 2 waits on step 1 first, then on its teacher; step 1's weights stay
    # needed until step 2 is done
    runner = StudyRunner(study, Options(runs_dir=tmp_path / "W", results_dir=tmp_path / "R"))
    s0 = plan.runs[plan.cells[("syn", "methods", "student", 0)]]
    d0 = plan.runs[plan.cells[("syn", "methods", "msa_awmse", 0)]]
    lines = {line.split()[0]: line for line in runner.describe()}
    assert "pending" in lines[str(s0.init)] and f"waiting on step {s0.init}" in lines[s0.id]
    assert f"waiting on step {d0.init}" in lines[d0.id]
    for run_id in (str(d0.init), t1, t2):
        (root / run_id).mkdir(parents=True)
        (root / run_id / "metrics.json").write_text(json.dumps({"best_val": 0.1, "last": {}}))
    assert runner.needs_weights(str(d0.init), runner.plan)
    (root / str(d0.init) / "best.safetensors").write_bytes(b"x")
    lines = {line.split()[0]: line for line in runner.describe()}
    assert f"waiting on teacher {t2}" in lines[d0.id]
    (root / t2 / "best.safetensors").write_bytes(b"x")
    lines = {line.split()[0]: line for line in runner.describe()}
    assert "pending" in lines[d0.id]


def _fake_done(folder: Path, cfg) -> None:
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"best_val": 0.5, "last": {}}))
    (folder / "best.safetensors").write_bytes(b"w")


def test_a_run_another_study_finished_with_the_same_config_is_linked_not_retrained(tmp_path):
    runs = tmp_path / "W"
    first = StudyRunner(load_study(write_study(tmp_path / "a")), Options(runs_dir=runs))
    plan = first.plan
    teacher = plan.teachers["syn"]
    d0, s0, s1 = (
        plan.cells[("syn", "methods", r, s)]
        for r, s in (("msa_awmse", 0), ("student", 0), ("student", 1))
    )
    for run_id in (teacher, d0, s0):
        _fake_done(runs / "tiny" / run_id, plan.runs[run_id].cfg)
    # seed 1 of the student alone: finished with another learning rate, so another run
    _fake_done(runs / "tiny" / s1, apply_overrides(plan.runs[s1].cfg, ["optim.lr=0.5"]))
    # a second study with the same rows and a row of its own; its name differs
    path = write_study(
        tmp_path / "b", _with(name="other", methods__fitnet={"overrides": ["method.name=fitnet"]})
    )
    lines: list[str] = []
    second = StudyRunner(load_study(path), Options(runs_dir=runs, say=lines.append))
    # FitNet seed 0 of the second study, finished in the first under another name and id
    f0 = second.plan.cells[("syn", "methods", "fitnet", 0)]
    elsewhere = runs / "tiny" / "syn-tune-fitnet-lam1-s0-0123abcd"
    mine = f"teacher.checkpoint={runs / 'tiny' / teacher / 'best.safetensors'}"
    _fake_done(elsewhere, apply_overrides(second.plan.runs[f0].cfg, ["name=x", mine]))
    assert {teacher, d0, s0, s1} <= set(second.plan.runs)  # ids: the configs, not the study
    dry = {line.split()[0]: line for line in second.describe()}
    assert f"done in {runs / 'tiny' / teacher} (linked" in dry[teacher]
    assert f"done in {runs / 'tiny' / d0} (linked" in dry[d0]  # its teacher would be linked
    assert "pending" in dry[s1] and not (runs / "other").exists()  # a dry run links nothing
    second._share_finished(second.plan)
    root = runs / "other"
    linked = sorted(p.name for p in root.iterdir() if p.is_symlink())
    # the teacher first, so that the distilled run's teacher weights are the same file
    assert linked == sorted([teacher, d0, s0, f0])
    assert all((root / r).resolve() == runs / "tiny" / r for r in linked if r != f0)
    assert (root / f0).resolve() == elsewhere
    assert lines[0].endswith(f"shared {teacher}: done in {runs / 'tiny' / teacher}")
    assert second.status(d0).state == "done" and second.status(s1).state == "pending"
    # off: nothing is linked
    off = tmp_path / "c"
    third = StudyRunner(
        load_study(write_study(off, _with(name="third"))), Options(runs_dir=runs, share=False)
    )
    third._share_finished(third.plan)
    assert not (runs / "third").exists()


@pytest.mark.slow  # two real teacher runs in subprocesses
def test_a_teacher_in_steps_trains_step_two_from_step_one(tmp_path, cache):
    path = write_study(tmp_path, _with(datasets__syn__teacher=["teacher.yaml", "more.yaml"]))
    cmd = study_cmd(path, tmp_path, cache, "--only", "syn-teacher*")
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    first, final = sorted((tmp_path / "W" / "tiny").glob("syn-teacher*"))
    assert first.name.startswith("syn-teacher-") and final.name.startswith("syn-teacher2-")
    assert res.stdout.index(f"start {first.name}") < res.stdout.index(f"start {final.name}")
    assert (final / "metrics.json").is_file()
    cfg = yaml.safe_load((final / "config.yaml").read_text())
    assert cfg["model"]["checkpoint"] == str(first / "best.safetensors")
    # step 2 started from step 1's weights: at lr 1e-7 its weights end where step 1's best
    # are (AdamW moves each by at most ~lr a step); a fresh network, or step 1 trained at lr
    # 0.05, would be 1e-2 and more away
    from irkd.weights import load_neutral

    w1 = load_neutral(first / "best.safetensors")[0]
    w2 = load_neutral(final / "checkpoints" / "last" / "student.safetensors")[0]
    keys = [k for k in w1 if w1[k].size and not k.rsplit(".", 1)[-1].startswith(("running", "num"))]
    assert len(keys) > 10
    assert max(float(abs(w1[k] - w2[k]).max()) for k in keys) < 1e-5


@pytest.mark.slow  # a teacher and two student steps, real runs in subprocesses
def test_a_distilled_student_in_steps_trains_step_two_alone_from_step_one(tmp_path, cache):
    alone = {"config": "step2.yaml", "overrides": ["method.name=none"]}
    path = write_study(tmp_path, _with(datasets__syn__student=["student.yaml", alone]))
    cmd = study_cmd(path, tmp_path, cache, "--only", "syn-teacher*", "--only", "syn-msa_awmse-s0*")
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    root = tmp_path / "W" / "tiny"
    (first,) = root.glob("syn-msa_awmse-s0-[0-9a-f]*")
    (final,) = root.glob("syn-msa_awmse-s0-step2-*")
    assert res.stdout.index(f"start {first.name} (distill") < res.stdout.index(
        f"start {final.name} (train"
    )
    cfg = yaml.safe_load((final / "config.yaml").read_text())
    assert cfg["model"]["checkpoint"] == str(first / "best.safetensors")
    assert cfg["teacher"] is None and cfg["data"]["crop"] == 64
    from irkd.weights import load_neutral

    w1 = load_neutral(first / "best.safetensors")[0]
    w2 = load_neutral(final / "checkpoints" / "last" / "student.safetensors")[0]
    keys = [k for k in w1 if w1[k].size and not k.rsplit(".", 1)[-1].startswith(("running", "num"))]
    assert len(keys) > 10
    assert max(float(abs(w1[k] - w2[k]).max()) for k in keys) < 1e-5  # lr 1e-7: still step 1's
    table = json.loads((tmp_path / "R" / "tiny" / "table.json").read_text())
    (msa,) = [r for r in table["datasets"]["syn"]["methods"] if r["row"] == "msa_awmse"]
    assert msa["run_ids"] == [final.name] and msa["steps"][0]["run_ids"] == [first.name]


def test_dry_run_statuses_and_only(tmp_path, capsys):
    path = write_study(tmp_path)
    work = tmp_path
    study = load_study(path)
    runner = StudyRunner(study, Options(runs_dir=work / "W", results_dir=work / "R"))
    plan = runner.plan
    t = plan.teachers["syn"]
    s0 = plan.cells[("syn", "methods", "student", 0)]
    (work / "W/tiny" / t).mkdir(parents=True)
    (work / "W/tiny" / t / "metrics.json").write_text(json.dumps({"best_val": 0.1, "last": {}}))
    (work / "W/tiny" / t / "best.safetensors").write_bytes(b"x")
    ck = work / "W/tiny" / s0 / "checkpoints/last"
    ck.mkdir(parents=True)
    (ck / "state.json").write_text(json.dumps({"epoch": 1}))
    lines = {line.split()[0]: line for line in runner.describe()}
    assert lines[t].split()[2] == "done" and "partial epoch 1/2" in lines[s0]
    assert "pending" in lines[plan.cells[("syn", "methods", "msa_awmse", 1)]]
    assert runner.describe()[-1] == "1/5 runs done"
    (work / "W/tiny" / t / "metrics.json").unlink()
    lines = {line.split()[0]: line for line in runner.describe()}
    assert f"waiting on teacher {t}" in lines[plan.cells[("syn", "methods", "msa_awmse", 0)]]
    rc = main(["study", str(path), "--dry-run", "--only", "*-s1-*", "--runs-dir", str(work / "W"),
               "--results-dir", str(work / "R")])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 3 and all("-s1-" in line for line in out[:2])


def test_interrupted_runs_resume_before_new_ones_start(tmp_path):
    runner = StudyRunner(
        load_study(write_study(tmp_path)),
        Options(runs_dir=tmp_path / "W", results_dir=tmp_path / "R"),
    )
    plan = runner.plan
    ids = list(plan.runs)
    last = ids[-1]
    ck = tmp_path / "W/tiny" / last / "checkpoints/last"
    ck.mkdir(parents=True)
    (ck / "state.json").write_text(json.dumps({"epoch": 1}))
    order = [run_id for run_id, _ in runner._order(plan)]
    assert order == [last, *ids[:-1]]


def test_committed_results_count_as_done_and_a_needed_teacher_is_retrained(tmp_path):
    # A fresh machine: the run folders are gone, the committed results/ are there.
    path = write_study(tmp_path)
    study = load_study(path)
    runner = StudyRunner(study, Options(runs_dir=tmp_path / "W", results_dir=tmp_path / "R"))
    plan = runner.plan
    t = plan.teachers["syn"]
    s0 = plan.cells[("syn", "methods", "student", 0)]
    d0 = plan.cells[("syn", "methods", "msa_awmse", 0)]
    for run_id in (t, s0):
        dest = tmp_path / "R/tiny/runs" / run_id
        dest.mkdir(parents=True)
        (dest / "metrics.json").write_text(json.dumps({"best_val": 0.1, "last": {}}))
    assert runner.status(t).state == "done" and runner.status(s0).state == "done"
    assert runner.status(d0).state == "pending"
    # the teacher's weights are gone and a pending distillation needs them: train it again
    assert runner.needs_weights(t, plan)
    assert not runner.needs_weights(s0, plan)
    # once every run that distils from it is done, its weights are no longer needed
    for run_id in (d0, plan.cells[("syn", "methods", "msa_awmse", 1)]):
        dest = tmp_path / "R/tiny/runs" / run_id
        dest.mkdir(parents=True)
        (dest / "metrics.json").write_text(json.dumps({"best_val": 0.1, "last": {}}))
    assert not runner.needs_weights(t, plan)
    # a run folder that exists wins over the committed copy (a rerun in progress)
    (tmp_path / "W/tiny" / s0).mkdir(parents=True)
    assert runner.status(s0).state == "pending"


def test_a_fresh_machine_trains_again_the_chain_a_pending_step_needs(tmp_path):
    # Students in steps, step 1 committed (done) and its weights gone, step 2 pending: step 1
    # is trained again, and so is the teacher it distils from.
    alone = {"config": "step2.yaml", "overrides": ["method.name=none"]}
    study = load_study(write_study(tmp_path, _with(datasets__syn__student=["student.yaml", alone])))
    runner = StudyRunner(study, Options(runs_dir=tmp_path / "W", results_dir=tmp_path / "R"))
    plan = runner.plan
    t = plan.teachers["syn"]
    final = plan.runs[plan.cells[("syn", "methods", "msa_awmse", 0)]]
    first = str(final.init)
    assert plan.runs[first].teacher == t and final.teacher is None
    for run_id in plan.runs:
        if run_id != final.id:
            dest = tmp_path / "R/tiny/runs" / run_id
            dest.mkdir(parents=True)
            (dest / "metrics.json").write_text(json.dumps({"best_val": 0.1, "last": {}}))
    assert runner.status(first).state == runner.status(t).state == "done"
    assert runner.needs_weights(first, plan) and runner.needs_weights(t, plan)
    lines = {line.split()[0]: line for line in runner.describe()}
    assert "trained again" in lines[t] and "trained again" in lines[first]
    # only what the selected runs need: with step 2 left out, nothing is trained again
    runner.opts.only = [t, first]
    assert not runner.needs_weights(first, plan) and not runner.needs_weights(t, plan)
    # once step 1's weights are there, the teacher's are no longer needed
    runner.opts.only = []
    (tmp_path / "W/tiny" / first).mkdir(parents=True)
    (tmp_path / "W/tiny" / first / "best.safetensors").write_bytes(b"x")
    (tmp_path / "W/tiny" / first / "metrics.json").write_text(
        json.dumps({"best_val": 0.1, "last": {}})
    )
    assert not runner.needs_weights(first, plan) and not runner.needs_weights(t, plan)


# ----------------------------------------------------------------------------- the report


def _metrics(iou: float, last: float, val: float) -> dict:
    figs = {"iou": iou, "niou": iou + 0.1, "pd": 0.5 + iou, "fa_1e6": 100 * iou}
    lst = {"iou": last, "niou": last + 0.1, "pd": 0.5 + last, "fa_1e6": 100 * last}
    return {**figs, "best_epoch": 1, "best_val": val, "last_epoch": 2, "last": lst}


def test_report_numbers_from_per_run_files(tmp_path):
    spec = {**STUDY, "seeds": [0, 1, 2]}
    spec["methods"] = {**STUDY["methods"], "fitnet": {"overrides": ["method.name=fitnet"]}}
    study = load_study(write_study(tmp_path, spec))
    root, res = tmp_path / "W" / "tiny", tmp_path / "R" / "tiny"
    plan = validate_study(study, root)
    iou = {
        "student": [0.30, 0.34, 0.29],
        "msa_awmse": [0.35, 0.33, 0.38],
        "fitnet": [0.31, None, None],
    }
    last = {
        "student": [0.28, 0.30, 0.31],
        "msa_awmse": [0.36, 0.30, 0.33],
        "fitnet": [0.2, None, None],
    }
    files = {plan.teachers["syn"]: _metrics(0.45, 0.44, 0.5)}
    for row in iou:
        for seed in (0, 1, 2):
            if iou[row][seed] is not None:
                run_id = plan.cells[("syn", "methods", row, seed)]
                files[run_id] = _metrics(iou[row][seed], last[row][seed], iou[row][seed] + 0.2)
    for run_id, m in files.items():
        (res / "runs" / run_id).mkdir(parents=True)
        (res / "runs" / run_id / "metrics.json").write_text(json.dumps(m))
    table = aggregate(study, plan, res, "results/tiny")
    rows = {r["row"]: r for r in table["datasets"]["syn"]["methods"]}
    teacher = table["datasets"]["syn"]["teacher"]
    assert teacher["best"]["iou"] == 0.45 and teacher["last"]["iou"] == 0.44

    msa, ref = rows["msa_awmse"], iou["student"]
    assert msa["n"] == 3 and msa["seeds"] == [0, 1, 2]
    assert msa["best"]["iou"]["mean"] == pytest.approx(statistics.mean(iou["msa_awmse"]))
    assert msa["best"]["iou"]["std"] == pytest.approx(statistics.stdev(iou["msa_awmse"]))
    assert msa["last"]["iou"]["mean"] == pytest.approx(statistics.mean(last["msa_awmse"]))
    assert msa["best"]["fa_1e6"]["mean"] == pytest.approx(100 * statistics.mean(iou["msa_awmse"]))
    d = [a - b for a, b in zip(iou["msa_awmse"], ref, strict=True)]
    assert msa["diff_best"]["iou"]["per_seed"] == pytest.approx({"0": d[0], "1": d[1], "2": d[2]})
    assert msa["diff_best"]["iou"]["mean"] == pytest.approx(statistics.mean(d))
    assert msa["diff_best"]["iou"]["std"] == pytest.approx(statistics.stdev(d))
    assert msa["diff_best"]["iou"]["n_positive"] == 2
    dl = [a - b for a, b in zip(last["msa_awmse"], last["student"], strict=True)]
    assert msa["diff_last"]["iou"]["mean"] == pytest.approx(statistics.mean(dl))
    assert msa["diff_last"]["iou"]["n_positive"] == 2
    assert msa["gap_to_teacher_best"]["iou"] == pytest.approx(
        statistics.mean(iou["msa_awmse"]) - 0.45
    )
    assert msa["runs"] == [
        f"results/tiny/runs/{plan.cells[('syn', 'methods', 'msa_awmse', s)]}" for s in (0, 1, 2)
    ]

    fit = rows["fitnet"]  # one seed: n says so, std is null
    assert fit["n"] == 1 and fit["missing_seeds"] == [1, 2] and fit["best"]["iou"]["std"] is None
    assert fit["diff_best"]["iou"]["n"] == 1 and fit["diff_best"]["iou"]["std"] is None
    assert fit["diff_best"]["iou"]["mean"] == pytest.approx(0.31 - 0.30)
    assert rows["student"]["diff_best"]["iou"]["mean"] == 0.0

    md = format_table(table)
    assert msa["val_iou"]["mean"] == pytest.approx(statistics.mean(iou["msa_awmse"]) + 0.2)
    assert "| msa_awmse | 3/3 | 55.33 ± 2.52 | 35.33 ± 2.52 |" in md
    assert "| fitnet | 1/3 | 51.00 | 31.00 |" in md and "step by step" not in md
    assert "+1.00" in md  # fitnet ΔIoU 1 point, and gaps shown signed
    assert tuning_report(study, plan) == {"seed": None, "datasets": {}}


def test_report_of_students_in_steps_shows_each_step_and_the_paired_change(tmp_path):
    spec = _with(datasets__syn__student=["student.yaml", "step2.yaml"])
    study = load_study(write_study(tmp_path, spec))
    root, res = tmp_path / "W" / "tiny", tmp_path / "R" / "tiny"
    plan = validate_study(study, root)
    step1 = {"student": [0.30, 0.40], "msa_awmse": [0.50, 0.45]}
    step2 = {"student": [0.35, 0.38], "msa_awmse": [0.55, 0.46]}
    for row in step1:
        for seed in (0, 1):
            final = plan.cells[("syn", "methods", row, seed)]
            for run_id, v in ((plan.runs[final].init, step1), (final, step2)):
                (res / "runs" / str(run_id)).mkdir(parents=True)
                m = _metrics(v[row][seed], v[row][seed], v[row][seed] + 0.1)
                (res / "runs" / str(run_id) / "metrics.json").write_text(json.dumps(m))
    table = aggregate(study, plan, res, "results/tiny")
    rows = {r["row"]: r for r in table["datasets"]["syn"]["methods"]}
    msa = rows["msa_awmse"]
    assert msa["best"]["iou"]["mean"] == pytest.approx(0.505)  # the table is the last step
    one, two = msa["steps"]
    assert one["run_ids"] == [plan.runs[r].init for r in msa["run_ids"]]
    assert one["iou"]["mean"] == pytest.approx(0.475) and two["iou"]["mean"] == pytest.approx(0.505)
    assert one["val_iou"]["mean"] == pytest.approx(0.575)
    assert two["diff_to_step_before"]["mean"] == pytest.approx(0.03)
    assert two["diff_to_step_before"]["n_positive"] == 2
    assert rows["student"]["steps"][1]["diff_to_step_before"]["n_positive"] == 1
    md = format_table(table)
    assert "### Main table, step by step" in md
    assert "| msa_awmse | 47.50 ± 3.54 | 57.50 ± 3.54 | 50.50 ± 6.36 | 60.50 ± 6.36 | +3.00" in md


# ----------------------------------------------------------------------------- failures


@pytest.mark.slow  # a study of two real runs in subprocesses
def test_a_failed_run_is_reported_and_the_others_continue(tmp_path):
    student = {**STUDENT, "data": {**STUDENT["data"], "root": str(tmp_path / "no-such-data")}}
    spec = {**STUDY, "seeds": [0], "methods": {"student": {"overrides": ["method.name=none"]}}}
    path = write_study(tmp_path, spec, student)
    cmd = study_cmd(path, tmp_path, tmp_path / "cache", "--workers", "2")
    res = subprocess.run(cmd, capture_output=True,
                         text=True, env=ENV, cwd=tmp_path, timeout=300)  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED syn-student-s0-" in res.stdout and "no-such-data" in res.stdout
    assert "done syn-teacher-" in res.stdout  # the teacher ran regardless
    assert "1/2 runs done, 1 failed" in res.stdout
    table = json.loads((tmp_path / "R/tiny/table.json").read_text())
    assert table["datasets"]["syn"]["methods"][0]["n"] == 0


# ----------------------------------------------------------------------------- whole studies


def _strip_paths(obj):
    if isinstance(obj, dict):
        return {k: _strip_paths(v) for k, v in obj.items() if k not in ("runs", "run")}
    if isinstance(obj, list):
        return [_strip_paths(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    """The tiny study run once, uninterrupted, with two workers."""
    work = tmp_path_factory.mktemp("straight")
    path = write_study(work)
    t0 = time.monotonic()
    res = subprocess.run(study_cmd(path, work, cache, "--workers", "2"), capture_output=True,
                         text=True, env=ENV, cwd=work, timeout=600)  # fmt: skip
    return work, path, res, time.monotonic() - t0


@pytest.mark.slow
def test_study_end_to_end(finished, cache):
    work, path, res, seconds = finished
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"study of 5 runs: {seconds:.1f} s")
    assert "5/5 runs done, 0 failed" in res.stdout
    out = work / "R" / "tiny"
    for name in (
        "table.json",
        "table.md",
        "iou_bars_syn.png",
        "val_curves_syn.png",
        "pd_fa_syn.png",
    ):
        assert (out / name).stat().st_size > 0, name
    table = json.loads((out / "table.json").read_text())
    rows = table["datasets"]["syn"]["methods"]
    assert [r["row"] for r in rows] == ["student", "msa_awmse"] and all(r["n"] == 2 for r in rows)
    assert table["datasets"]["syn"]["teacher"]["done"]
    for r in rows:
        for run_id in r["run_ids"]:
            folder = out / "runs" / run_id
            assert sorted(p.name for p in folder.iterdir()) == [
                "config.yaml", "log_summary.json", "metrics.json", "run.json"
            ]  # fmt: skip
            run = json.loads((folder / "run.json").read_text())
            assert run["wall_s"] > 0 and run["threads"] == 1 and run["versions"]["torch"]
            assert run["machine"]["nproc"] and "irkd " in run["command"]
            # named from the folder holding --results-dir (absolute here), not absolutely
            assert f" R/tiny/runs/{run_id}/config.yaml --out " in run["command"]
            assert {"revision", "dirty"} <= set(run["git"])
            summary = json.loads((folder / "log_summary.json").read_text())
            assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
            assert (
                summary["epochs"][1]["val"] is not None and "loss" in summary["epochs"][1]["train"]
            )
            metrics = json.loads((folder / "metrics.json").read_text())
            assert {"iou", "best_epoch", "best_val", "last", "last_epoch"} <= set(metrics)
    md = (out / "table.md").read_text()
    assert "### Main table, best-on-validation weights" in md and "| msa_awmse | 2/2 |" in md

    # a second invocation starts nothing and leaves the table as it was
    before = (out / "table.json").read_text()
    again = subprocess.run(study_cmd(path, work, cache), capture_output=True, text=True,
                           env=ENV, cwd=work, timeout=300)  # fmt: skip
    assert again.returncode == 0 and " start " not in again.stdout, again.stdout
    assert (out / "table.json").read_text() == before
    rep = subprocess.run(study_cmd(path, work, cache, "--report"), capture_output=True, text=True,
                         env=ENV, cwd=work, timeout=300)  # fmt: skip
    assert rep.returncode == 0 and (out / "table.json").read_text() == before


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _live_processes_mentioning(text: str) -> list[int]:
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(proc.name) != os.getpid():
            out.append(int(proc.name))
    return out


@pytest.mark.slow
def test_study_killed_with_sigkill_then_restarted_gives_the_same_table(finished, cache, tmp_path):
    straight_work = finished[0]
    assert finished[2].returncode == 0
    path = write_study(tmp_path)
    cmd = study_cmd(path, tmp_path, cache, "--workers", "2")
    runs = tmp_path / "W" / "tiny"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while True:  # wait until some run has a checkpoint and is not finished
        partial = [
            d for d in runs.glob("*")
            if (d / "checkpoints/last/state.json").is_file() and not (d / "metrics.json").is_file()
        ]  # fmt: skip
        if partial:
            break
        assert proc.poll() is None, "the study ended before a checkpoint was seen"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    delay = random.uniform(0.0, 0.3)
    time.sleep(delay)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    print(f"killed after {delay:.2f} s more, {len(children)} run(s) in progress")
    # the runs die with the study (PR_SET_PDEATHSIG): nothing keeps writing
    deadline = time.monotonic() + 20
    while _live_processes_mentioning(str(runs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _live_processes_mentioning(str(runs))
    snap = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    time.sleep(1.0)
    assert snap == {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    interrupted = [d.name for d in runs.glob("*") if (d / "checkpoints/last/state.json").is_file()
                   and not (d / "metrics.json").is_file()]  # fmt: skip

    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for run_id in interrupted:
        assert f"start {run_id} (" in res.stdout and "resume after epoch" in res.stdout, res.stdout
    a = json.loads((straight_work / "R/tiny/table.json").read_text())
    b = json.loads((tmp_path / "R/tiny/table.json").read_text())
    assert _strip_paths(a) == _strip_paths(b)
    for run_id in (p.name for p in (straight_work / "R/tiny/runs").iterdir()):
        for name in ("log_summary.json", "metrics.json"):
            x = json.loads((straight_work / "R/tiny/runs" / run_id / name).read_text())
            y = json.loads((tmp_path / "R/tiny/runs" / run_id / name).read_text())
            for d in (x, y):
                for key in ("wall_s", "weights", "dataset"):
                    d.pop(key, None)
            assert x == y, (run_id, name)


def test_committed_run_results_are_not_ignored_by_git():
    # results/<study>/runs/<id>/ must reach git (an unanchored `runs/` pattern once hid it)
    root = Path(__file__).resolve().parents[1]
    probe = "results/some-study/runs/some-run/metrics.json"
    out = subprocess.run(
        ["git", "check-ignore", "-q", probe], cwd=root, capture_output=True, check=False
    )
    assert out.returncode == 1, f"{probe} is ignored by .gitignore"
    assert subprocess.run(["git", "check-ignore", "-q", "runs/x"], cwd=root).returncode == 0
