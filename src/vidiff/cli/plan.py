"""``vidiff-plan``: what a training run needs per GPU, before it is launched.

    vidiff-plan experiment=paper/stage3_v2v gpu=a100-40
    vidiff-plan experiment=paper/stage3_v2v data.tasks.edit.batch_size=8 stage.gradient_checkpointing=true

The same ``conf/`` and overrides as ``vidiff-train``, plus ``gpu`` (a key of ``plan.gpus``) and ``plan.*``. Builds
the model from its configs on the meta device (no weights are read, no GPU is used), traces one training step
with fake tensors, prints a table and writes ``plan.out`` (``plan.json``). See :mod:`vidiff.training.plan`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vidiff.config import conf_dir
from vidiff.errors import VIDiffError


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="plan")
def _hydra_main(cfg: DictConfig) -> None:
    from vidiff.training.plan import make_plan

    try:
        plan = make_plan(cfg)
    except (VIDiffError, ValueError) as err:
        print(f"vidiff-plan: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(plan.table())
    out = Path(cfg.plan.out)
    out.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    print(f"vidiff-plan: wrote {out}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
