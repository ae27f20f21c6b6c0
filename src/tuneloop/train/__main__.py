"""``python -m tuneloop.train CONFIG.json``: one run from a JSON ``TrainConfig``.

The entry point for several processes: ``torchrun --nproc_per_node 2 -m tuneloop.train config.json``.
Settings (catalog, device, threads) come from the environment, read once here. Rank 0 prints the result as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tuneloop.config import get_settings
from tuneloop.train.config import TrainConfig
from tuneloop.train.loop import train


def main(argv: list[str] | None = None) -> None:
    """Run the configuration in ``argv[0]`` and print the result (rank 0 only)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tuneloop.train CONFIG.json", file=sys.stderr)
        sys.exit(2)
    config = TrainConfig.model_validate(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    result = train(config, settings=get_settings())
    if os.environ.get("RANK", "0") == "0":
        print(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
