"""Configs from configs/ with Hydra-style key=value overrides, and the run directory they are saved in."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose_config(name: str, overrides: list[str], usage: str | None = None) -> DictConfig:
    """configs/<name>.yaml with its defaults and `key=value` overrides; unknown keys are errors.

    `-h`/`--help` prints `usage`, every key with its default and the config groups' options, then exits.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        if "-h" in overrides or "--help" in overrides:
            groups = {d.name: sorted(str(p.relative_to(d).with_suffix("")) for p in d.rglob("*.yaml"))
                      for d in sorted(CONFIG_DIR.iterdir()) if d.is_dir()}  # fmt: skip
            print((usage or "").strip() + "\n\nkey=value overrides; the defaults (configs/" + name + ".yaml):\n")
            print(OmegaConf.to_yaml(compose(config_name=name)))
            print("config groups: " + "; ".join(f"{g}=" + "|".join(opts) for g, opts in groups.items()))
            raise SystemExit(0)
        try:
            return compose(config_name=name, overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            message = str(e).split("\nConfig search path")[0]
            if "Available options" not in message:  # an unknown key rather than an unknown group option
                message += f"\nvalid keys for {name}: {', '.join(_dotted_keys(compose(config_name=name)))}"
            raise SystemExit(f"error: {message}") from None


def _dotted_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        keys += _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else [f"{prefix}{key}"]
    return keys


def make_run_dir(cfg: DictConfig, kind: str, label: str) -> Path:
    """Create the run directory (cfg.run_dir, or runs/<kind>/<label>-<time>) and save the resolved config."""
    if cfg.get("run_dir"):
        run_dir = Path(cfg.run_dir)
    else:
        run_dir = Path("runs") / kind / f"{label.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir
