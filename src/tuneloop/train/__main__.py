"""``python -m tuneloop.train CONFIG.json``: one run from a JSON ``TrainConfig``.

The entry point for several processes: ``torchrun --nproc_per_node 2 -m tuneloop.train config.json``.
Rank 0 prints the result as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tuneloop.train import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    """Run the configuration in ``argv[0]`` and print the result (rank 0 only)."""
    import os

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tuneloop.train CONFIG.json", file=sys.stderr)
        sys.exit(2)
    config = TrainConfig.model_validate(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    result = train(config)
    if os.environ.get("RANK", "0") == "0":
        print(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
