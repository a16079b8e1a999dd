"""``vidiff-eval``: the Hydra evaluation app over ``conf/eval.yaml`` (the work is in :mod:`vidiff.evaluation.runner`).

    vidiff-eval benchmark=table3_recolor_davis checkpoint=outputs/train/runs/<run>/model
    vidiff-eval benchmark=table4_deblur_bsd checkpoint='{multi-task: a/model, single-task: b/model}'
    vidiff-eval benchmark=table2_edit checkpoint=<dir> mode=guidance_grid       # Figure 5
    vidiff-eval mode=compare +compare.runs='{multi-task: runA, single-task: runB}' compare.metrics=[psnr]  # Fig. 7

Writes to the run folder (``hydra.run.dir``): ``metrics.json``, ``table.md``, ``table.csv``, ``table.tex``, the
edited videos under ``videos/<method>/``, and the figures.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vidiff.cli.common import one_line_errors
from vidiff.config import conf_dir
from vidiff.evaluation.runner import evaluate


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with one_line_errors("vidiff-eval"):
        evaluate(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
