"""Scheduled retraining: re-run the pipeline only when data, code or params changed.

`python -m pipeline.retrain [--force] [--report PATH]` (console script `pipeline-retrain`)
is what a person runs locally and what CI runs on a schedule. It asks DVC what changed
since the last successful run (dvc.lock records each stage's last successful run; a
failed stage does not update it, so the next call retries). Nothing changed: it says so
and exits 0 in about two seconds, without importing TensorFlow or MLflow. Otherwise it
runs `dvc repro` and writes a Markdown report: metrics diff against HEAD, validation
summary, best Optuna trial and the registry decision.

Upstream data: datasets.yaml pins the sha256 of every file, and the download stage keeps
only files that match, so a source that starts serving different bytes cannot slip in
unnoticed; it makes the download fail. Taking a new release of a dataset means updating
its pins in datasets.yaml, a dependency of the download stage, which `dvc status` sees.
The no-change check therefore needs no network.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import config, fsio
from pipeline.errors import EXIT_USER_ERROR, PipelineError, cli

# Exit codes CI branches on (documented in the README).
EXIT_NOTHING_TO_DO = 0  # nothing changed, or stages re-ran without producing a new model
EXIT_FAILED = 1  # `dvc repro` failed: the report names the stage and its error
EXIT_ERROR = EXIT_USER_ERROR  # retrain itself could not start (not a DVC repo, bad params.yaml)
EXIT_PROMOTED = 10  # retrained; the new version is @champion
EXIT_CHALLENGER = 11  # retrained; the new version is kept as @challenger

DEFAULT_REPORT = Path("reports/retrain.md")
LOCK_FILE = Path("dvc.lock")
TAIL_LINES = 60
MAX_CHANGES = 6  # change lines shown per stage in the report


@dataclass(frozen=True)
class Outcome:
    code: int
    headline: str


def pending_changes(status: dict[str, Any]) -> dict[str, list[str]]:
    """Flatten `dvc status` output into readable change lines per stage."""
    changes: dict[str, list[str]] = {}
    for stage, entries in status.items():
        lines: list[str] = []
        for entry in entries:
            if isinstance(entry, str):  # "changed checksum", "always changed"
                lines.append(entry)
                continue
            for kind, items in entry.items():
                what = kind.removeprefix("changed ")
                if not isinstance(items, dict):
                    lines.append(f"{what}: {items}")
                    continue
                for path, state in items.items():
                    if isinstance(state, dict):  # params file: {key: state}
                        lines += [f"param {key} {s}" for key, s in state.items()]
                    else:
                        lines.append(f"{what[:-1] if what.endswith('s') else what} {path} {state}")
        changes[stage.rsplit(":", 1)[-1]] = lines or ["changed"]
    return changes


def dvc_status() -> dict[str, Any]:
    """What `dvc status` reports for the repo in the working directory."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            return repo.status()
    except DvcException as err:
        raise PipelineError(
            f"`dvc status` failed in {Path.cwd()} ({type(err).__name__}: {err}). Run retrain "
            f"from the repository root (where dvc.yaml is).") from err


def stages_rerun(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Stages whose dvc.lock entry changed, in pipeline order."""
    return [name for name, entry in after.items() if before.get(name) != entry]


def read_lock() -> dict[str, Any]:
    import yaml

    if not LOCK_FILE.exists():
        return {}
    return (yaml.safe_load(LOCK_FILE.read_text(encoding="utf-8")) or {}).get("stages", {})


def env_with_venv() -> dict[str, str]:
    """dvc.yaml runs `python -m ...`: make that this interpreter's environment."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_repro(force: bool) -> tuple[int, list[str]]:
    """Run `dvc repro`, echoing its output; return its exit code and the last lines."""
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else [])]
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_with_venv(), bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line.rstrip("\n"))
    return proc.wait(), list(tail)


def metrics_diff() -> str:
    """`dvc metrics diff --md`: the workspace against HEAD's committed metrics (offline)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "--md"],
                          capture_output=True, text=True, env=env_with_venv())
    if proc.returncode != 0:
        return f"_not available: {(proc.stderr.strip().splitlines() or ['dvc failed'])[-1]}_"
    return proc.stdout.strip() or "_no metric changed since HEAD_"


def error_paragraphs(lines: list[str]) -> list[str]:
    """The one-paragraph stage errors (`ERROR [stage]: ...`) in ``lines``, unwrapped."""
    text = "\n".join(lines)
    return [" ".join(m.group(0).split())
            for m in re.finditer(r"ERROR \[\w+\]: .*?(?=\n\s*\n|\Z)", text, re.S)]


def outcome_for(repro_code: int, ran: list[str], decision: dict | None) -> Outcome:
    """Map what happened to the exit code and a one-line headline."""
    if repro_code != 0:
        return Outcome(EXIT_FAILED, "retraining FAILED: `dvc repro` exited "
                                    f"{repro_code}; the registry's @champion was not moved")
    if "register" not in ran or decision is None:
        stages = ", ".join(ran) or "none"
        return Outcome(EXIT_NOTHING_TO_DO, f"pipeline up to date (stages re-run: {stages}); "
                                           "no new model version was registered")
    version = f"{decision['model_name']} v{decision['version']}"
    if decision["decision"] == "promoted":
        return Outcome(EXIT_PROMOTED, f"retrained and PROMOTED: {version} is @champion")
    return Outcome(EXIT_CHALLENGER, f"retrained, kept as challenger: {version} is @challenger")


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def kv_table(rows: dict[str, Any]) -> list[str]:
    return ["| key | value |", "|---|---|", *[f"| {k} | {fmt(v)} |" for k, v in rows.items()]]


def render_report(*, outcome: Outcome, changes: dict[str, list[str]], ran: list[str],
                  forced: bool, seconds: float, metrics_md: str, validation: dict | None,
                  best: dict | None, tune_summary: dict | None, decision: dict | None,
                  errors: list[str], tail: list[str]) -> str:
    """The Markdown report (also CI's job summary)."""
    out = ["# Retraining report", "", f"**{outcome.headline}** (exit code {outcome.code}, "
           f"{seconds:.0f} s{', forced' if forced else ''})", "", "## What changed"]
    if changes:
        for stage, lines in changes.items():
            more = f"; and {len(lines) - MAX_CHANGES} more" if len(lines) > MAX_CHANGES else ""
            out.append(f"- `{stage}`: " + "; ".join(lines[:MAX_CHANGES]) + more)
    else:
        out.append("- nothing (forced run)" if forced else "- nothing")
    out += ["", f"Stages re-run: {', '.join(f'`{s}`' for s in ran) or 'none'}", ""]
    if outcome.code == EXIT_FAILED:
        out += ["## Failure", ""]
        out += [f"> {e}" for e in errors] or ["> (no stage error paragraph; see the log tail)"]
        out += ["", "<details><summary>last lines of <code>dvc repro</code></summary>", "",
                "```", *tail, "```", "</details>", ""]
    out += ["## Registry decision", ""]
    if decision and "register" in ran:
        out += [f"**{decision['decision']}**: {decision['reason']}", "",
                "| | version | test accuracy |", "|---|---|---|",
                f"| new model | v{decision['version']} | {fmt(decision['accuracy'])} |",
                f"| champion before | {('v' + str(decision['champion_version'])) if decision['champion_version'] else 'none'}"
                f" | {fmt(decision['champion_accuracy'])} |", "",
                f"Gate: min_accuracy {fmt(decision['min_accuracy'])}, min_delta "
                f"{fmt(decision['min_delta'])}; MLflow run `{decision['run_id']}`.", ""]
    else:
        out += ["No new model version was registered by this run; aliases are unchanged.", ""]
    out += ["## Metrics (workspace vs HEAD, `dvc metrics diff`)", ""]
    lines = metrics_md.splitlines()
    headline_rows = [line for line in lines if "| per_class." not in line]
    out += ["\n".join(headline_rows), ""]
    if len(headline_rows) < len(lines):  # per-class rows: folded away, one click to see
        out += ["<details><summary>all metrics, per class included</summary>", "", metrics_md, "",
                "</details>", ""]
    out += ["## Data validation", ""]
    if validation:
        verdict = "passed" if validation.get("success") else "FAILED"
        out += [f"Great Expectations: **{verdict}**, {validation.get('evaluated', 0)} expectations "
                f"evaluated, {validation.get('failed', 0)} failed.", "",
                "| suite | evaluated | failed |", "|---|---|---|",
                *[f"| {name} | {s.get('evaluated')} | {s.get('failed')} |"
                  for name, s in validation.get("suites", {}).items()], ""]
        if "rows" in validation:
            out += [f"Rows: {validation['rows']}; duplicates: {validation.get('duplicates')}; "
                    f"train/test overlap: {validation.get('train_test_overlap')}.", ""]
    else:
        out += ["_no validation summary_", ""]
    out += ["## Best trial (Optuna)", ""]
    if best:
        out += [f"Study `{best.get('study_name')}`, trial {best.get('best_trial')}: "
                f"val_accuracy {fmt(best.get('best_value'))}.", "",
                *kv_table(best.get("params", {})), ""]
        if tune_summary:
            out += [f"Trials: {tune_summary.get('trials_complete')} complete, "
                    f"{tune_summary.get('trials_pruned')} pruned, "
                    f"{tune_summary.get('trials_failed')} failed; "
                    f"{tune_summary.get('epochs_total')} epochs in total.", ""]
    else:
        out += ["_no tuning results_", ""]
    return "\n".join(out)


def read_optional(path: Path) -> dict | None:
    try:
        return fsio.read_json(path)
    except (OSError, ValueError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pipeline-retrain",
        description="Retrain if data, code or params changed since the last successful run. "
                    f"Exit codes: {EXIT_NOTHING_TO_DO} nothing to do, {EXIT_PROMOTED} retrained "
                    f"and promoted, {EXIT_CHALLENGER} retrained and kept as challenger, "
                    f"{EXIT_FAILED} the pipeline failed, {EXIT_ERROR} retrain could not start.")
    parser.add_argument("--force", action="store_true",
                        help="re-run every stage (`dvc repro --force`) even if nothing changed")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT,
                        help=f"where to write the Markdown report (default {DEFAULT_REPORT})")
    return parser.parse_args(argv)


def retrain(args: argparse.Namespace) -> int:
    """Check, maybe reproduce, report; return the exit code."""
    started = time.perf_counter()
    paths = config.section("paths", config.Paths)
    changes = pending_changes(dvc_status())
    if not changes and not args.force:
        print("nothing changed since the last successful run (dvc status is clean): "
              "no retraining needed. Use --force to retrain anyway.")
        return EXIT_NOTHING_TO_DO
    for stage, lines in changes.items():
        print(f"changed: {stage}: {'; '.join(lines)}")
    lock_before = read_lock()
    repro_code, tail = run_repro(args.force)
    ran = stages_rerun(lock_before, read_lock())
    decision = read_optional(paths.registry / "decision.json")
    outcome = outcome_for(repro_code, ran, decision)
    report = render_report(
        outcome=outcome, changes=changes, ran=ran, forced=args.force,
        seconds=time.perf_counter() - started, metrics_md=metrics_diff(),
        validation=read_optional(paths.validation / "summary.json"),
        best=read_optional(paths.tune / "best_params.json"),
        tune_summary=read_optional(paths.tune / "summary.json"),
        decision=decision, errors=error_paragraphs(tail), tail=tail)
    fsio.write_text(args.report, report)
    print(f"\n{outcome.headline}\nreport: {args.report}")
    return outcome.code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    @cli
    def run() -> None:
        sys.exit(retrain(args))

    run()


if __name__ == "__main__":
    main()
