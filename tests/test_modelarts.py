"""ModelArts job entry (modelarts/start.py, irkd.modelarts): a fake ``moxing`` copies between
local folders standing in for OBS; the boot file trains and distills end to end."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import irkd.modelarts as ma
from irkd.config import config_from_dict, save_config
from irkd.data import synthesize

REPO = Path(__file__).resolve().parents[1]
BOOT = REPO / "modelarts" / "start.py"

FAKE_MOXING = textwrap.dedent(
    '''
    """A stand-in for ModelArts' moxing: obs://BUCKET/KEY is $FAKE_OBS_ROOT/BUCKET/KEY."""
    import os
    import shutil
    from types import SimpleNamespace

    def _local(url):
        if url.startswith("obs://"):
            return os.path.join(os.environ["FAKE_OBS_ROOT"], url[len("obs://"):])
        return url

    def _log(op, src, dst):
        with open(os.path.join(os.environ["FAKE_OBS_ROOT"], "mox.log"), "a") as fh:
            fh.write(f"{op} {src} {dst}\\n")

    def copy_parallel(src, dst):
        _log("copy_parallel", src, dst)
        shutil.copytree(_local(src), _local(dst), dirs_exist_ok=True)

    def copy(src, dst):
        _log("copy", src, dst)
        os.makedirs(os.path.dirname(_local(dst)) or ".", exist_ok=True)
        shutil.copyfile(_local(src), _local(dst))

    file = SimpleNamespace(copy_parallel=copy_parallel, copy=copy)
    '''
)


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    """A fake OBS (bucket ``bkt``: ``data/`` a tiny dataset) and the fake moxing package."""
    base = tmp_path_factory.mktemp("ma")
    root = base / "obs"
    synthesize(root / "bkt" / "data", 16, seed=0, size=64, test_fraction=0.25)
    pkg = base / "fake" / "moxing"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_MOXING)
    return root, base / "fake"


@pytest.fixture(scope="module")
def teacher_on_obs(obs):
    import torch

    from torch_ref.models import create_model
    from torch_ref.weights import save_neutral_net

    torch.manual_seed(1)
    path = obs[0] / "bkt" / "teacher" / "best.safetensors"
    path.parent.mkdir(parents=True)
    save_neutral_net(create_model("dnanet_xs"), path, name="dnanet_xs")
    return "obs://bkt/teacher/best.safetensors"


def _cfg(tmp: Path, **extra) -> Path:
    d = {
        "name": "ma-job",
        "backend": "pytorch",
        "data": {"root": "/nowhere", "crop": 32, "batch_size": 4, "val_fraction": 0.25},
        "model": {"name": "dnanet_xxs"},
        "method": {"name": "none"},
        "optim": {"lr": 5e-3},
        "schedule": {"epochs": 2, "steps_per_epoch": 2},
        "train": {"log_every": 1},
        **extra,
    }
    path = tmp / "job.yaml"
    save_config(config_from_dict(d), path)
    return path


def _boot(args, obs, tmp, fake=True, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "RANK_SIZE")}
    env.update(FAKE_OBS_ROOT=str(obs[0]), IRKD_TORCH_THREADS="1", **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(obs[1])] if fake else [])
    proc = subprocess.run(
        [sys.executable, str(BOOT), *args, f"--cache_dir={tmp / 'cache'}"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow  # a training job in a subprocess
def test_boot_file_trains_from_obs_and_writes_to_obs(obs, tmp_path):
    cfg = _cfg(tmp_path)
    args = ["--data_url=obs://bkt/data", "--train_url=obs://bkt/out/", f"--config={cfg}"]
    args += ["--schedule.epochs=1", "optim.lr=0.004"]  # a hyperparameter and an override
    rc, out = _boot(args, obs, tmp_path)
    assert rc == 0, out[-3000:]
    run = obs[0] / "bkt" / "out" / "ma-job"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["last_epoch"] == 1 and metrics["iou"] is not None
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["schedule"]["epochs"] == 1 and saved["optim"]["lr"] == 0.004
    assert Path(saved["data"]["root"]) == tmp_path / "cache" / "data"  # staged by moxing
    assert (run / "best.safetensors").is_file() and (run / "log.jsonl").is_file()
    log = (obs[0] / "mox.log").read_text()
    assert "copy_parallel obs://bkt/data" in log
    assert f"{tmp_path / 'cache' / 'output' / 'ma-job'} obs://bkt/out/ma-job" in log


@pytest.mark.slow  # a two-process distillation job in a subprocess
def test_boot_file_distills_on_two_processes_into_a_local_folder(obs, teacher_on_obs, tmp_path):
    cfg = _cfg(
        tmp_path,
        teacher={"name": "dnanet_xs"},
        method={"name": "msa_awmse", "stages": ["enc1"]},
    )
    out_dir = tmp_path / "outputs"
    args = ["--task=distill", "--data_url=obs://bkt/data", f"--train_url={out_dir}"]
    args += [f"--config={cfg}", f"--teacher_url={teacher_on_obs}", "--nproc_per_node=2"]
    rc, out = _boot(args, obs, tmp_path)
    assert rc == 0, out[-3000:]
    assert "torch.distributed.run --nnodes=1 --node_rank=0 --nproc_per_node=2" in out
    run = out_dir / "ma-job"
    assert (run / "metrics.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert Path(saved["teacher"]["checkpoint"]).name == "teacher.safetensors"
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert start["mode"] == "distill msa_awmse" and start["teacher"] == "dnanet_xs"


def test_remote_url_without_moxing_is_one_line(obs, tmp_path):
    args = ["--data_url=obs://bkt/data", "--train_url=obs://bkt/o", f"--config={_cfg(tmp_path)}"]
    rc, out = _boot(args, obs, tmp_path, fake=False)
    assert rc == 2
    lines = [x for x in out.strip().splitlines() if x.strip()]
    assert lines == [
        "irkd modelarts: error: obs://bkt/data: copying from object storage needs moxing "
        "(ModelArts images)"
    ]


def test_parse_job_arguments_and_environment():
    job = ma.parse_job(
        ["--config=c.yaml", "--optim.lr=0.01", "seed=3", "--nproc_per_node=8", "--backend=x"],
        {"DATA_URL": "obs://b/d", "TRAIN_URL": "obs://b/o"},
    )
    assert (job.task, job.data_url, job.train_url) == ("train", "obs://b/d", "obs://b/o")
    assert job.overrides == ["seed=3", "optim.lr=0.01", "backend=x"]
    assert job.nproc_per_node == 8
    with pytest.raises(ma.JobError, match="--train_url"):
        ma.parse_job(["--config=c.yaml", "--data_url=d"], {})
    with pytest.raises(ma.JobError, match="needs --teacher_url"):
        ma.parse_job(["--task=distill", "--config=c", "--data_url=d", "--train_url=t"], {})
    with pytest.raises(ma.JobError, match="unknown argument '--verbose'"):
        ma.parse_job(["--config=c", "--data_url=d", "--train_url=t", "--verbose"], {})
    with pytest.raises(ma.JobError, match="needs --teacher_url and --student_url"):
        ma.parse_job(["--task=release", "--train_url=t"], {})


def test_launch_commands_follow_the_modelarts_environment(tmp_path):
    env = {"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "1", "VC_WORKER_HOSTS": "node-a,node-b"}
    node = ma.node_facts(env)
    assert (node.hosts, node.index, node.master) == (2, 1, "node-a")
    assert not node.uploads and node.stages
    job = ma.Job("train", "d", "t", "c.yaml", nproc_per_node=8)
    ms_cmd = ma.launch_command("mindspore", job, node, ["train", "c.yaml"], tmp_path)
    assert Path(ms_cmd[0]).name == "msrun" and ms_cmd[-2:] == ["train", "c.yaml"]
    for arg in ("--worker_num=16", "--local_worker_num=8", "--node_rank=1"):
        assert arg in ms_cmd
    assert "--master_addr=node-a" in ms_cmd
    pt = ma.launch_command("pytorch", job, node, ["train"], tmp_path)
    assert pt[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=8"} <= set(pt)
    # the platform started one process per device from a rank table: run in this process
    table = {"RANK_TABLE_FILE": "/user/config/jobstart_hccl.json", "RANK_SIZE": "8"}
    node = ma.node_facts({**table, "RANK_ID": "3", "DEVICE_ID": "3"})
    assert node.per_device and not node.stages and not node.uploads
    cmd = ma.launch_command("mindspore", job, node, ["train"], tmp_path)
    assert cmd == [sys.executable, "-m", "irkd.cli", "train"]


def test_release_task_runs_parity_then_release(tmp_path, monkeypatch):
    t, s = tmp_path / "t.safetensors", tmp_path / "s.safetensors"
    t.write_bytes(b"t")
    s.write_bytes(b"s")
    calls = []
    monkeypatch.setattr(ma, "_run", lambda cmd, cwd: calls.append(list(cmd)) or 0)
    job = ma.parse_job(
        ["--task=release", f"--teacher_url={t}", f"--student_url={s}", f"--train_url={tmp_path}/o"],
        {},
    )
    job.cache_dir = str(tmp_path / "cache")
    assert ma.run_job(job, ma.Node()) == 0
    assert [c[3] for c in calls] == ["parity", "release"]
    assert calls[0][-2:] == ["--out", str(tmp_path / "o" / "parity.json")]
    assert calls[1][-2:] == ["--out", str(tmp_path / "o" / "release")]
