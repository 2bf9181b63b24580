"""Every bad value a user can type is refused up front with one line on stderr naming it: no traceback, no NaN
run saved with exit code 0 (issue "Nothing lost, nothing silent", items 11 and 12)."""

import pytest

from rain.cli import main
from rain.train.trainer import train
from tests.conftest import tiny_run_config

BAD_SETTINGS = [
    ("train.lr=inf", "train.lr"), ("train.lr=nan", "train.lr"), ("model.rope_theta=0", "model.rope_theta"),
    ("model.norm_eps=-1e-6", "model.norm_eps"), ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.grad_clip=nan", "train.grad_clip"), ("train.eval_batches=0", "train.eval_batches"),
    ("train.beta2=1.5", "train.beta2"), ("train.eps=-1e-8", "train.eps"), ("model.head_dim=-2", "model.head_dim"),
    ("model.init_std=-0.02", "model.init_std"), ("train.device=tpu", "train.device"), ("train.seed=-1", "train.seed"),
]


def one_line_error(capsys, argv, fragment):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses a malformed option before rain runs
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code != 0, f"{argv} was accepted"
    assert len(err.splitlines()) == 1 and err.startswith("rain: error:") and "Traceback" not in err, err
    assert fragment in err, err


@pytest.mark.parametrize("setting, name", BAD_SETTINGS)
def test_a_bad_config_value_is_refused_before_training(setting, name, tiny_data, tmp_path, capsys):
    one_line_error(capsys, ["train", "--data", tiny_data, "--out", tmp_path / "run", "--set", setting], name)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("bad") / "run"
    train(tiny_run_config(tiny_data, max_steps=2, eval_every=2), run, log=lambda *_: None)
    return run


@pytest.mark.parametrize("args, fragment", [
    (["train", "--stop-after", "-1"], "--stop-after: -1 is outside [1, inf)"),
    (["sample", "RUN", "--max-tokens", "-3"], "--max-tokens: -3 is outside [1, inf)"),
    (["sample", "RUN", "--temperature", "nan"], "--temperature: nan is not a finite number"),
    (["sample", "RUN", "--top-p", "1.5"], "--top-p: 1.5 is outside (0, 1]"),
    (["sample", "RUN", "--prompt", ""], "prompt 1 is empty"),
])
def test_a_bad_command_line_number_or_prompt_is_one_line(args, fragment, run_dir, tmp_path, capsys):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "run")]
    one_line_error(capsys, args, fragment)


def test_a_gpu_resume_temperature_at_or_above_the_limit_is_refused(tiny_data, tmp_path, capsys):
    one_line_error(capsys, ["train", "--data", tiny_data, "--out", tmp_path / "run", "--set", "train.gpu_max_temp=80",
                            "--set", "train.gpu_resume_temp=85"], "train.gpu_resume_temp (85.0) must be below")
