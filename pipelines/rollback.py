"""``python -m pipelines.rollback``: give alias ``champion`` back to the version holding ``previous``.

Uses the same MLflow store as the pipeline (``RL_TRADING_HOME`` / ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.resources_by_env import resources_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    registry = resources_for()["model_registry"]
    try:
        demoted, restored = registry.rollback()
    except ValueError as error:
        print(f"rollback refused: {error}", file=sys.stderr)
        return 1
    print(f"{registry.model_name}: champion is version {restored} again; version {demoted} is now 'previous'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
