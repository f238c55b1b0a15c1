"""Run metrics: one JSON line per record, the same scalars in TensorBoard, and a learning-curve plot."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worldmodel.checkpoint import atomic_write
from worldmodel.ope import model_selected


def strict_json(obj: Any, **dumps_kwargs) -> str:
    """JSON that every parser reads: NaN and +-inf become null (json.dumps would write NaN/Infinity)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False, **dumps_kwargs)


def write_json(obj: Any, path: Path) -> None:
    """`obj` as strict, indented JSON in `path`, written atomically."""
    with atomic_write(path) as tmp:
        Path(tmp).write_text(strict_json(obj, indent=2) + "\n")


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure at `path` (its format from the suffix: .png, .pdf, .svg), written
    atomically (a reader, or a kill mid-write, never meets half a file), then closed."""
    import matplotlib.pyplot as plt

    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def read_records(run_dir: Path, kind: str) -> list[dict]:
    """The `kind` records of run_dir/metrics.jsonl, oldest first ([] without the file); reading
    opens no TensorBoard writer, so another process's run can be read while it runs, and a
    half-written line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if r.get("kind") == kind]


class MetricsLogger:
    """Appends records to run_dir/metrics.jsonl and mirrors them to TensorBoard (run_dir/tb).

    metrics.jsonl is the record; TensorBoard's events are rebuilt from it when it is truncated.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb_dir = Path(run_dir) / "tb"
        self.writer = self._new_writer()

    def _new_writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.tb_dir))

    def log(self, kind: str, step: int, **values: float) -> None:
        """One record, e.g. log("eval", 2000, ret=153.2); TensorBoard tag "<kind>/<name>"."""
        with open(self.path, "a") as f:
            f.write(strict_json({"kind": kind, "step": step, **values}) + "\n")
        self._mirror(kind, step, values)
        self.writer.flush()

    def sync(self) -> None:
        """Force metrics.jsonl's records to the disk (before a checkpoint that covers them)."""
        if self.path.exists():
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())

    def _mirror(self, kind: str, step: int, values: dict) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{name}", value, step)

    def truncate(self, keep: Callable[[dict], bool]) -> None:
        """Keep only the records for which keep(record) holds (resuming drops those past the
        checkpoint), in metrics.jsonl and in TensorBoard alike."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        rows = []
        for i, line in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:  # only the last line can be cut short (a process killed mid-write)
                    raise ValueError(f"{self.path}, line {i + 1}, is not JSON: the file is damaged; delete that "
                                     "line to resume (its record is lost)") from None
        kept = [r for r in rows if keep(r)]
        # TensorBoard is rebuilt from the kept records; a marker stands while it is not, so that a
        # process killed mid-way rebuilds it at the next resume (its records then drop nothing)
        stale = self.path.parent / ".tb-rebuilding"
        if len(kept) == len(lines) and not stale.exists():
            return
        stale.touch()
        if len(kept) != len(lines):
            with atomic_write(self.path) as tmp:
                Path(tmp).write_text("".join(strict_json(r) + "\n" for r in kept))
        self.writer.close()
        shutil.rmtree(self.tb_dir, ignore_errors=True)
        self.writer = self._new_writer()
        for r in kept:
            self._mirror(r["kind"], r["step"], {k: v for k, v in r.items() if k not in ("kind", "step")})
        self.writer.flush()
        stale.unlink()

    def records(self, kind: str) -> list[dict]:
        return read_records(self.path.parent, kind)

    def plot(self, out: Path, title: str) -> None:
        """Returns as a PNG: offline evaluations against agent updates (with a Dyna run's return
        estimated in the model, and the evaluation that estimate selects), and training episodes
        and evaluations against agent decisions (each panel only when the run has such records)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        offline = self.records("offline_eval")
        online = {kind: self.records(kind) for kind in ("episode", "eval")}
        if offline:  # (an offline run's own evaluation at env step 0 repeats its last offline one)
            online["eval"] = [r for r in online["eval"] if r["step"] > 0]
        panels = [p for p, rows in (("offline", offline), ("online", online["episode"] + online["eval"])) if rows]
        fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(7 * max(len(panels), 1), 4), squeeze=False)
        for ax, panel in zip(axes[0], panels or ["online"]):
            if panel == "offline":
                ax.plot([r["step"] for r in offline], [r["ret"] for r in offline], marker="o", label="evaluation")
                if best := model_selected(offline):  # the return estimated in the model, and the evaluation it selects
                    estimated = [r for r in offline if "model_ret" in r]
                    ax.plot([r["step"] for r in estimated], [r["model_ret"] for r in estimated], alpha=0.6,
                            label="estimated in the model")  # fmt: skip
                    ax.plot([best["step"]], [best["ret"]], "*", markersize=14, label="model-selected")
                ax.set(xlabel="agent updates (offline)", ylabel="return", title=f"{title}: offline")
            else:
                for kind, style in (("episode", dict(alpha=0.4, label="training episodes")),
                                    ("eval", dict(marker="o", label="evaluation"))):  # fmt: skip
                    if online[kind]:
                        ax.plot([r["step"] for r in online[kind]], [r["ret"] for r in online[kind]], **style)
                ax.set(xlabel="agent decisions (env_steps; x action_repeat simulator steps)", ylabel="return", title=title if len(panels) < 2 else f"{title}: online")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, out)

    def close(self) -> None:
        self.writer.close()
