import subprocess
import sys

import pytest

from irkd.cli import build_parser, main


def test_parsers_are_independent():
    a = build_parser().parse_args(["data", "synth", "out", "--n", "5"])
    b = build_parser().parse_args(["data", "synth", "other"])
    assert a.n == 5 and b.n == 400 and b.out == "other"


def test_cli_does_not_import_frameworks():
    code = (
        "import sys; from irkd.cli import main; main(['data', 'check', '/nonexistent']);"
        "assert 'torch' not in sys.modules and 'mindspore' not in sys.modules"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_user_error_is_one_line(tmp_path, capsys):
    rc = main(["data", "check", str(tmp_path / "missing")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("irkd: error:") and "missing" in err and "Traceback" not in err


def test_synth_then_check_via_cli(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", str(out), "--n", "12", "--seed", "3"]) == 0
    assert main(["data", "check", str(out), "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "images 12" in text and "result: OK" in text
    assert (tmp_path / "r.json").stat().st_size > 0
    # A second synth into the same folder is refused, and says how to proceed.
    assert main(["data", "synth", str(out), "--n", "12"]) == 1
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow  # both real datasets once more (tests/test_data_check.py: fast)
def test_check_real_datasets_via_cli(nudt_root, nuaa_root, capsys):
    assert main(["data", "check", str(nudt_root)]) == 0
    out = capsys.readouterr().out
    assert "images 1327" in out and "train 663, test 664" in out and "warnings (0)" in out
    assert main(["data", "check", str(nuaa_root)]) == 0
    out = capsys.readouterr().out
    assert "images 427" in out and "train 213, test 214" in out
    assert "warnings (1)" in out and "Misc_111" in out


def test_train_and_distill_help_name_the_choices(capsys):

    from irkd.cli import main as cli_main
    from irkd.methods import BASELINE_DEFAULTS
    from irkd.zoo import MODELS

    for mode in ("train", "distill"):
        with pytest.raises(SystemExit):
            cli_main([mode, "--help"])
        text = capsys.readouterr().out
        assert "pytorch" in text and "mindspore" in text
        assert all(name in text for name in MODELS), text
        if mode == "distill":
            assert all(m in text for m in ("msa_awmse", *BASELINE_DEFAULTS)), text
