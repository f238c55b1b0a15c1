"""A non-editable install (a built wheel) ships configs/ and `python -m worldmodel.run` works outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(args, cwd, env, timeout=120):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    command = " ".join(map(str, args))
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_ships_configs_and_runs_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

    # Build from a copy of the sources, so the build leaves no build/ or egg-info in the checkout.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("worldmodel", "kernels", "planners", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src],
         cwd=tmp_path, env=env)  # fmt: skip
    (wheel,) = wheels.glob("worldmodel-*.whl")

    # A fresh venv holding only the wheel; the dependencies come from this venv's site-packages through a plain
    # path line in a .pth (the .pth files there, the checkout's editable finder among them, are not processed).
    new_venv = tmp_path / "venv"
    venv.create(new_venv, with_pip=False)
    python = new_venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp_path, env=env).stdout.strip()).resolve()  # fmt: skip
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", site, wheel],
         cwd=tmp_path, env=env)  # fmt: skip
    deps = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (site / "_worldmodel_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))

    empty = tmp_path / "cwd"
    empty.mkdir()
    where = _run([python, "-c", "import worldmodel, worldmodel.config as c; print(worldmodel.__file__); "
                  "print(c.CONFIG_DIR)"], cwd=empty, env=env).stdout.split()  # fmt: skip
    module_file, config_dir = (Path(p).resolve() for p in where)
    assert module_file.is_relative_to(site), f"worldmodel imported from {module_file}, not the wheel in {site}"
    assert config_dir == site / "worldmodel" / "configs"
    assert not module_file.is_relative_to(REPO)

    help_text = _run([python, "-m", "worldmodel.run", "--help"], cwd=empty, env=env).stdout
    assert "the defaults (configs/config.yaml)" in help_text
    assert "planner=bc|cem|icem|mbpo|mopo|mppi|random|ravl" in help_text
    assert "|ant|" in help_text and "|dmc/cartpole-swingup|" in help_text and "|Hopper-v5|" in help_text  # every task, generated from worldmodel.envs

    run_dir = tmp_path / "run"
    out = _run([
        python, "-m", "worldmodel.run", "env=hopper", "env_steps=200", "seed_steps=50", "train_every=100",
        "eval_every=200", "checkpoint_every=100", "eval_episodes=1", "env.max_episode_steps=50",
        "model.ensemble_size=3", "model.num_elites=2", "model.hidden=32", "model.fit.max_epochs=3", "fit_epochs=2",
        "planner.candidates=64", "planner.horizon=5", f"run_dir={run_dir}",
    ], cwd=empty, env=env, timeout=300)  # fmt: skip
    assert "step 200: evaluation return" in out.stdout + out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 200 and summary["env"] == "hopper"
    assert (run_dir / "checkpoint.pt").stat().st_size > 0
    assert "name: hopper" in (run_dir / "config.yaml").read_text()
