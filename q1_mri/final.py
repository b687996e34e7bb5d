"""The deployed Q1 model: the chosen configuration's k fold models, exactly as the
cross-validation scored them.

    python -m q1_mri.final --data ../shared/data/mri        # make q1-final

Reads the final choice q1_mri.eval made on inner validation (metrics.json): the method (model
and width), the seed whose k fold models are deployed and whether to average with the
left-right flipped prediction; checks that every fold's run is still the one evaluation scored
and writes results/q1/<source>/final.json (common.deploy). Trains nothing: the deployed model
averages the predictions of models each validated on its own held-out fold (no refit, no new
schedule). q1_mri.infer reads final.json.
"""
from __future__ import annotations

from common import cli
from common.deploy import deploy
from common.results import results_dir
from q1_mri.data import resolve_source


def parse_args(argv=None):
    return cli.data_args(__doc__, argv)


def main(args) -> dict:
    source = resolve_source(args.data)
    root = results_dir("q1", source, args.results_root)
    final = deploy(root, "q1", source, ("method", "flip", "inner_val_score"))
    print(f"deployed Q1 model: {final['method']}, the {len(final['folds'])} fold models of seed "
          f"{final['seed']}{', with the flip' if final['flip'] else ''}; written to "
          f"{root / 'final.json'}")
    return final


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
