"""Does recalibrating a fitted model's variance (`model.fit.recalibrate=true`) hold on rows it
never saw, and how far does it move MOPO's penalty? A model of the default size is fitted to
convergence on part of a dataset (fit()'s defaults: its own 20% holdout and early stopping, as an
offline run fits), then recalibrated on a calibration split (`worldmodel.fitting.recalibrate_variance`,
what the fit does on its holdout) and judged on a test split:

    python docs/results/scripts/recalibration_check.py data/hopper-medium-replay.hdf5 --rows 40000 --seed 0

Prints the elites' calibration (mean squared error / predicted variance; 1 is calibrated) on both
splits before and after, and MOPO's penalty (the elites' largest next-state standard-deviation
norm, `max_aleatoric`) averaged over the test rows before and after.
"""

import argparse

import torch

from worldmodel import EnsembleDynamics
from worldmodel.datasets import load_dataset
from worldmodel.fitting import model_targets, recalibrate_variance
from worldmodel.uncertainty import Uncertainty


def penalty(model: EnsembleDynamics, rows) -> float:
    """MOPO's measure (its defaults: max_aleatoric over the elites' next-state outputs), averaged over rows."""
    with torch.no_grad():
        mean, var = model.predict(rows["obs"], rows["action"], members=model.elites)
    return Uncertainty()(mean, var).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--rows", type=int, default=None, help="rows fitted on (default: all but the two splits)")
    parser.add_argument("--calibration-rows", type=int, default=5000)
    parser.add_argument("--test-rows", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data, metadata = load_dataset(args.dataset)
    order = torch.randperm(len(data))
    test, cal = data[order[: args.test_rows]], data[order[args.test_rows : args.test_rows + args.calibration_rows]]
    rest = order[args.test_rows + args.calibration_rows :]
    train = data[rest[: args.rows] if args.rows else rest]
    model = EnsembleDynamics(data["obs"].shape[1], data["action"].shape[1])
    fit = model.fit(train, max_epochs=None)
    before = {"calibration": model.evaluate(cal)["calibration"], "test": model.evaluate(test)["calibration"],
              "penalty": penalty(model, test)}  # fmt: skip
    x = model.input_norm(torch.cat([cal["obs"], cal["action"]], -1))
    y = model.target_norm(model_targets(cal))
    shift, _ = recalibrate_variance(model, x, y)
    after = {"calibration": model.evaluate(cal)["calibration"], "test": model.evaluate(test)["calibration"],
             "penalty": penalty(model, test)}  # fmt: skip
    print(f"{args.dataset} ({metadata.get('env')}-{metadata.get('quality')}): fitted on {len(train)} rows, "
          f"{fit['epochs']} epochs, holdout MSE {sum(fit['holdout_mse']) / len(fit['holdout_mse']):.4f}; "
          f"variance scales exp(shift) over members and outputs: {shift.exp().min():.2f}-{shift.exp().max():.2f}")
    print("| | calibration rows | test rows | MOPO penalty (test rows) |\n|---|---|---|---|")
    for name, r in (("fitted", before), ("recalibrated", after)):
        print(f"| {name} | {r['calibration']:.3f} | {r['test']:.3f} | {r['penalty']:.4f} |")
    print(f"penalty x{after['penalty'] / before['penalty']:.3f}")


if __name__ == "__main__":
    main()
