"""What pruning saves: the same study with and without a pruner, counted in epochs.

Run from the project root after `dvc repro prepare`:
  python bench/pruning.py [--trials 12] [--limit 5000] [--pruners hyperband,median,none]
Each pruner gets a fresh in-memory study with the same seeded TPE sampler, the `tune`
search space and per-trial budget from params.yaml, and trial k seeded as the stage seeds
it. Prints epochs spent, best val accuracy and wall time per pruner, and each pruner's
epochs as a share of the unpruned study's (goal: <= 50% at a similar best value).
"""
from __future__ import annotations

import argparse
import time


def run_study(kind: str, trials: int, data, tune, runtime) -> dict:
    import optuna

    from pipeline.tune import make_objective, make_pruner, summarize

    sampler = optuna.samplers.TPESampler(seed=tune.sampler_seed, n_startup_trials=4,
                                         multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler,
                                pruner=make_pruner(kind, tune.epochs))
    started = time.perf_counter()
    study.optimize(make_objective(data, tune, runtime), n_trials=trials, gc_after_trial=True)
    return {"pruner": kind, "seconds": time.perf_counter() - started, **summarize(study)}


def main() -> None:
    import warnings

    import optuna

    from pipeline import config
    from pipeline.models import configure_runtime
    from pipeline.tune import load_trial_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--limit", type=int, default=5000,
                        help="train images per trial (stratified); 0 = tune.train_subset")
    parser.add_argument("--epochs", type=int, default=0, help="max epochs per trial; 0 = tune.epochs")
    parser.add_argument("--pruners", default="hyperband,median,none")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    runtime = config.section("runtime", config.RuntimeParams, params)
    tune = config.section("tune", config.TuneParams, params)
    tune = tune.model_copy(update={k: v for k, v in (("train_subset", args.limit),
                                                     ("epochs", args.epochs)) if v})
    configure_runtime(runtime.seed, runtime.intra_op_threads, runtime.inter_op_threads)
    data = load_trial_data(paths, tune, runtime.seed)
    print(f"{args.trials} trials x <= {tune.epochs} epochs on {len(data.y_train)} train / "
          f"{len(data.y_val)} val images", flush=True)

    rows = []
    for kind in args.pruners.split(","):
        rows.append(run_study(kind, args.trials, data, tune, runtime))
        r = rows[-1]
        print(f"  {kind}: {r['epochs_total']} epochs, best {r['best_val_accuracy']}, "
              f"{r['seconds']:.1f} s", flush=True)

    print(f"\n{'pruner':10s} {'epochs':>6s} {'complete':>8s} {'pruned':>6s} {'best val acc':>12s} "
          f"{'seconds':>8s}")
    for r in rows:
        print(f"{r['pruner']:10s} {r['epochs_total']:6d} {r['trials_complete']:8d} "
              f"{r['trials_pruned']:6d} {r['best_val_accuracy'] or 0:12.4f} {r['seconds']:8.1f}")
    base = next((r for r in rows if r["pruner"] == "none"), None)
    if base and base["epochs_total"]:
        for r in rows:
            if r is not base:
                share = r["epochs_total"] / base["epochs_total"]
                print(f"{r['pruner']}: {share:.0%} of the unpruned epochs "
                      f"({'meets' if share <= 0.5 else 'misses'} the <= 50% goal), best "
                      f"{(r['best_val_accuracy'] or 0) - (base['best_val_accuracy'] or 0):+.4f} "
                      f"vs unpruned")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
