"""The deployed Q2 model: the chosen configuration's k fold models, exactly as the
cross-validation scored them.

    python -m q2_ecg.final --data ../shared/data/ecg        # make q2-final

Reads the final choice that q2_ecg.eval made on inner validation (metrics.json): the model,
the seed whose k fold models are deployed, the decision biases and whether to adapt; checks
that every fold model's run is still the one evaluation scored and writes
results/q2/<source>/final.json (common.deploy). Trains nothing: the deployed model averages
the probabilities of models each validated on its own held-out fold, so there is no refit and
no schedule the cross-validation did not run. q2_ecg.infer reads final.json.
"""
from __future__ import annotations

from common import cli
from common.deploy import deploy
from common.results import results_dir
from q2_ecg.data import resolve_source


def parse_args(argv=None):
    return cli.data_args(__doc__, argv)


def main(args) -> dict:
    source = resolve_source(args.data)
    root = results_dir("q2", source, args.results_root)
    final = deploy(root, "q2", source, ("model", "adapt", "logit_bias", "selection",
                                        "inner_val_score"))
    print(f"deployed Q2 model: {final['model']}, the {len(final['folds'])} fold models of seed "
          f"{final['seed']} ({sum(len(w) for w in final['folds'].values())} networks), biases "
          f"{[round(b, 3) for b in final['logit_bias']]}, adaptation "
          f"{'on' if final['adapt'] else 'off'}; written to {root / 'final.json'}")
    return final


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
