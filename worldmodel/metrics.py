"""Run metrics: one JSON line per record, the same scalars in TensorBoard, and a learning-curve plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


class MetricsLogger:
    """Appends records to run_dir/metrics.jsonl and mirrors them to TensorBoard (run_dir/tb)."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, kind: str, step: int, **values: float) -> None:
        """One record, e.g. log("eval", 2000, ret=153.2); TensorBoard tag "<kind>/<name>"."""
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{kind}/{name}", value, step)
        self.writer.flush()

    def truncate(self, keep: Callable[[dict], bool]) -> None:
        """Keep only the records for which keep(record) holds (resuming drops those past the checkpoint)."""
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if keep(json.loads(line))]
            self.path.write_text("".join(line + "\n" for line in kept))

    def records(self, kind: str) -> list[dict]:
        if not self.path.exists():
            return []
        rows = (json.loads(line) for line in self.path.read_text().splitlines())
        return [r for r in rows if r["kind"] == kind]

    def plot(self, out: Path, title: str) -> None:
        """Episode and evaluation returns against env steps, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for kind, style in (("episode", dict(alpha=0.4, label="training episodes")),
                            ("eval", dict(marker="o", label="evaluation"))):  # fmt: skip
            rows = self.records(kind)
            if rows:
                ax.plot([r["step"] for r in rows], [r["ret"] for r in rows], **style)
        ax.set(xlabel="env steps", ylabel="return", title=title)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)

    def close(self) -> None:
        self.writer.close()
