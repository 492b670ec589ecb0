"""Hand commands on the registered model: `pipeline-registry {show,promote,rollback}`.

`promote` records the champion it replaces in the new champion's `previous_champion`
tag, so `rollback` can walk back one step at a time. Versions are never deleted.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline import config, tracking
from pipeline.errors import PipelineError, cli
from pipeline.register import (CHALLENGER, CHAMPION, TAG_ACCURACY, TAG_DECISION, TAG_PREVIOUS,
                               TAG_REASON, current_aliases)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pipeline-registry",
        description="Show and move the @champion/@challenger aliases of the registered model.")
    parser.add_argument("--name", help="registered model (default: register.model_name for data.dataset "
                                       "in params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="print the champion and challenger with their test scores")
    promote = sub.add_parser("promote", help="make VERSION the @champion")
    promote.add_argument("version", help="model version number")
    sub.add_parser("rollback", help="move @champion back to the previous champion")
    return parser.parse_args(argv)


def describe(client: Any, name: str, version: str) -> str:
    mv = client.get_model_version(name, version)
    tags = mv.tags or {}
    acc = tags.get(TAG_ACCURACY)
    return (f"v{version} (test accuracy {float(acc):.4f}" if acc else f"v{version} (test accuracy unknown") + \
        (f", {tags[TAG_DECISION]}: {tags[TAG_REASON]}" if tags.get(TAG_DECISION) else "") + \
        f", run {mv.run_id})"


def show(client: Any, name: str, aliases: dict[str, str]) -> None:
    versions = client.search_model_versions(f"name = '{name}'")
    print(f"{name}: {len(versions)} version(s)")
    for alias in (CHAMPION, CHALLENGER):
        version = aliases.get(alias)
        print(f"  @{alias}: {describe(client, name, version) if version else 'none'}")


def check_version(client: Any, name: str, version: str) -> None:
    try:
        client.get_model_version(name, version)
    except Exception as err:
        known = sorted((str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")), key=int)
        raise PipelineError(f"{name!r} has no version {version!r}; its versions are: "
                            f"{', '.join(known) or 'none'}") from err


def promote(client: Any, name: str, aliases: dict[str, str], version: str) -> None:
    check_version(client, name, version)
    previous = aliases.get(CHAMPION)
    if previous == version:
        print(f"{name} v{version} is already @{CHAMPION}; nothing changed")
        return
    if previous:
        client.set_model_version_tag(name, version, TAG_PREVIOUS, previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    print(f"{name}: @{CHAMPION} v{previous or '(none)'} -> v{version}")
    if aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
        print(f"{name}: @{CHALLENGER} removed (v{version} is the champion now)")


def rollback(client: Any, name: str, aliases: dict[str, str]) -> None:
    current = aliases.get(CHAMPION)
    if not current:
        raise PipelineError(f"{name!r} has no @{CHAMPION} to roll back")
    previous = (client.get_model_version(name, current).tags or {}).get(TAG_PREVIOUS)
    if not previous:
        raise PipelineError(
            f"{name} v{current} is @{CHAMPION} but no previous champion is recorded for it (tag "
            f"`{TAG_PREVIOUS}`); pick one with `pipeline-registry promote VERSION`")
    client.set_registered_model_alias(name, CHAMPION, previous)
    print(f"{name}: @{CHAMPION} v{current} -> v{previous} (rolled back)")


@cli
def main() -> None:
    import mlflow
    from mlflow import MlflowClient

    args = parse_args(sys.argv[1:])
    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data = config.section("data", config.DataParams, params)
    name = args.name or config.section("register", config.RegisterParams, params).name_for(data.dataset)
    tracking.connect(paths, data.dataset)
    client = MlflowClient()
    aliases = current_aliases(client, name, mlflow.get_tracking_uri())
    if aliases is None:
        raise PipelineError(f"no registered model named {name!r} in {mlflow.get_tracking_uri()}: "
                            "run `dvc repro register` first")
    if args.command == "show":
        show(client, name, aliases)
    elif args.command == "promote":
        promote(client, name, aliases, args.version)
    else:
        rollback(client, name, aliases)


if __name__ == "__main__":
    main()
