"""Evaluate the trained Q2 runs on held-out patients; write metrics.json and figures.

    python -m q2_ecg.eval --data ../shared/data/ecg
    python -m q2_ecg.eval --data OTHER --trained-on ../shared/data/ecg --save-predictions p.npz

Protocol: every number is computed on the test patients of the run's split (never used for
training, early stopping or tuning). Decision biases for SVEB/VEB, and the autoencoder's
threshold, are tuned on the validation patients only. Each metric is given for normal (class 0)
and abnormal (classes 1-2) and per class, with 95 % bootstrap intervals over patients.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import cli
from common.io import read_csv, read_json, write_json
from common.results import evaluation_dirs, provenance
from common.runtime import configure_threads, select_device
from common.stats import bootstrap_additive, patient_bootstrap
from q2_ecg.beats import RR_NAMES, build_table, table_to_device
from q2_ecg.data import load_records, resolve_source
from q2_ecg.metrics import confusion, ranking_metrics, summary_from_confusion, tune_logit_bias
from q2_ecg.predict import predict
from q2_ecg.train import make_split

SOLUTIONS = ("resnet", "context")  # the candidates for --save-predictions; the rest are ablations
DESCRIPTIONS = {
    "resnet": "1-D ResNet on a 2 s R-centred window and its record's median beat, + 8 RR features",
    "context": "the same beat encoder, then a transformer over 32 neighbouring beats",
    "segment": "ablation: 1-D ResNet on the zero-padded split_by_beat segment, no RR features",
    "autoencoder": "unsupervised: reconstruction error of an autoencoder fitted to normal beats",
    "rr-logistic": "baseline: logistic regression on the 8 RR features alone",
    "majority": "baseline: every beat called normal",
}
REPORTED = ([f"{c}_{m}" for c in ("NOR", "SVEB", "VEB") for m in ("se", "ppv", "f1", "sp")]
            + [f"{g}_{m}" for g in ("normal", "abnormal") for m in ("se", "ppv", "f1", "sp")]
            + ["macro_f1", "abnormal_macro_f1", "accuracy"])


def score(y: np.ndarray, pred: np.ndarray, p_abnormal: np.ndarray | None, patient: np.ndarray,
          n_boot: int = 1000) -> dict:
    """Every REPORTED metric (+ AUROC/AUPRC when a score is given) with patient-bootstrap CIs."""
    patients, inverse = np.unique(patient, return_inverse=True)
    per_patient = np.zeros((len(patients), 9))
    np.add.at(per_patient, inverse, np.eye(9)[y * 3 + pred])
    out = {}
    for metric in REPORTED:
        value, low, high = bootstrap_additive(
            per_patient, lambda t, m=metric: summary_from_confusion(t.reshape(*t.shape[:-1], 3, 3))[m],
            n_boot=n_boot)
        out[metric] = {"value": value, "ci95": [low, high]}
    if p_abnormal is not None:
        for name in ("auroc", "auprc"):
            value, low, high = patient_bootstrap(
                patient, lambda idx, n=name: ranking_metrics(y[idx], p_abnormal[idx])[n],
                n_boot=n_boot // 5)
            out[name] = {"value": value, "ci95": [low, high]}
    out["confusion"] = confusion(y, pred).tolist()
    out["beats"] = int(len(y))
    out["patients"] = int(len(patients))
    return out


def by_database(y, pred, p_abnormal, db) -> dict:
    """Point values of the main metrics per source database."""
    out = {}
    for name in np.unique(db):
        m = db == name
        s = summary_from_confusion(confusion(y[m], pred[m]))
        out[str(name)] = {k: float(s[k]) for k in ("SVEB_f1", "VEB_f1", "normal_f1",
                                                   "abnormal_f1", "abnormal_se", "abnormal_ppv")}
        out[str(name)].update(ranking_metrics(y[m], p_abnormal[m]) if p_abnormal is not None else {})
        out[str(name)]["beats"] = int(m.sum())
    return out


class Context:
    """The evaluation data of one source: records, beat table, device tensors (built once)."""

    def __init__(self, source, device):
        self.source, self.device = source, device
        self.records = load_records(source)
        self.table = build_table(self.records)
        self.dev = table_to_device(self.table, device)
        self.patient = self.records.patient_id[self.table.record]
        self.db = self.records.source_db[self.table.record]
        self._splits = {}

    def split(self, name: str, seed: int) -> np.ndarray:
        if (name, seed) not in self._splits:
            self._splits[name, seed] = make_split(self.records, self.table, name, seed)
        return self._splits[name, seed]

    def beats(self, split: np.ndarray | None, which: str) -> np.ndarray:
        scored = self.table.scored
        return np.flatnonzero(scored if split is None else scored & (split == which))


def load_run(folder, device):
    from q2_ecg.model import build_model
    ck = torch.load(folder / "best.pt", map_location=device, weights_only=False)
    model = build_model(**ck["model_args"]).to(device)
    model.load_state_dict(ck["ema"]["shadow"])
    return model, ck


def evaluate_run(folder, ctx: Context, test_ctx: Context | None = None) -> dict:
    """Tune on the run's validation patients, then score its test patients (or every scored beat
    of `test_ctx`, an external dataset)."""
    model, ck = load_run(folder, ctx.device)
    config = ck["config"]
    split = ctx.split(config["split"], config["seed"])
    val = ctx.beats(split, "val")
    out_val = predict(model, ctx.dev, val, ctx.table.record, ctx.device)
    tctx = test_ctx or ctx
    test = tctx.beats(None, "") if test_ctx else ctx.beats(split, "test")
    out = predict(model, tctx.dev, test, tctx.table.record, tctx.device)
    y_val, y = ctx.table.label[val], tctx.table.label[test]
    if model.cfg.autoencoder:
        threshold = _best_threshold(out_val, y_val)
        pred, p_abn, tuned = (out > threshold).astype(int), out, {"threshold": threshold}
        pred = np.where(pred == 1, 2, 0)     # "abnormal" as VEB: only the normal/abnormal view counts
    else:
        bias = tune_logit_bias(out_val, y_val)
        prob = softmax(out + bias, axis=1)
        pred, p_abn, tuned = prob.argmax(1), prob[:, 1] + prob[:, 2], {"logit_bias": bias.tolist()}
    summary = read_json(folder / "summary.json") if (folder / "summary.json").exists() else {}
    result = {"test": score(y, pred, p_abn, tctx.patient[test]), **tuned,
              "per_database": by_database(y, pred, p_abn, tctx.db[test]),
              "best_epoch": ck["epoch"], "split": config["split"],
              **{k: summary[k] for k in ("parameters", "wall_time_s", "beats_per_s", "device",
                                         "precision", "split_counts") if k in summary}}
    return result, {"beats": test, "y": y, "pred": pred, "p_abnormal": p_abn}


def _best_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """Anomaly-score threshold with the best normal-vs-abnormal F1 on validation beats."""
    candidates = np.quantile(score, np.linspace(0.5, 0.995, 100))
    f1 = [summary_from_confusion(_binary_cm(y > 0, score > t))["abnormal_f1"] for t in candidates]
    return float(candidates[int(np.nanargmax(f1))])


def _binary_cm(true_abn: np.ndarray, pred_abn: np.ndarray) -> np.ndarray:
    """A 3x3 confusion matrix with abnormal beats counted as VEB (for the normal/abnormal view)."""
    return confusion(np.where(true_abn, 2, 0), np.where(pred_abn, 2, 0))


def binary_only(result: dict) -> dict:
    """Drop per-class entries from a score() dict of a normal-vs-abnormal detector."""
    return {k: v for k, v in result.items()
            if k.startswith(("normal", "abnormal_se", "abnormal_ppv", "abnormal_f1", "abnormal_sp",
                             "auroc", "auprc", "beats", "patients"))}


def baselines(ctx: Context, split: np.ndarray) -> tuple[dict, dict]:
    """Majority class and an RR-only logistic regression, tuned like the networks."""
    train, val, test = (ctx.beats(split, s) for s in ("train", "val", "test"))
    rr, y = ctx.table.rr, ctx.table.label
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(rr[train], y[train])
    bias = tune_logit_bias(clf.decision_function(rr[val]), y[val])
    prob = softmax(clf.decision_function(rr[test]) + bias, axis=1)
    rr_pred, rr_p = prob.argmax(1), prob[:, 1] + prob[:, 2]
    patient = ctx.patient[test]
    results = {"rr-logistic": {"test": score(y[test], rr_pred, rr_p, patient), "logit_bias":
                               bias.tolist(), "features": list(RR_NAMES),
                               "per_database": by_database(y[test], rr_pred, rr_p, ctx.db[test])},
               "majority": {"test": score(y[test], np.zeros_like(y[test]), None, patient)}}
    preds = {"rr-logistic": {"beats": test, "y": y[test], "pred": rr_pred, "p_abnormal": rr_p}}
    return results, preds


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_eval_args(p, "beat")
    return p.parse_args(argv)


def main(args) -> dict:
    from q2_ecg import figures

    configure_threads()
    device = select_device(args.device)
    test_source = resolve_source(args.data)
    train_source = resolve_source(args.trained_on) if args.trained_on else test_source
    run_root, out_dir, external = evaluation_dirs("q2", train_source, test_source,
                                                  args.results_root)
    ctx = Context(train_source, device)
    test_ctx = Context(test_source, device) if external else None
    runs = {f.name: f for f in sorted(run_root.iterdir()) if (f / "best.pt").exists()}
    models, preds, histories = {}, {}, {}
    for name, folder in runs.items():
        model_name, split_name = name.split("-", 1)
        if external and split_name != "patient":
            continue
        result, pred = evaluate_run(folder, ctx, test_ctx)
        if model_name == "autoencoder":
            result["test"] = binary_only(result["test"])
        result["description"] = DESCRIPTIONS[model_name]
        models[name], preds[name] = result, pred
        if (folder / "history.csv").exists():
            histories[name] = read_csv(folder / "history.csv")
        print(f"  {name:<24} test abnormal F1 {result['test']['abnormal_f1']['value']:.3f}")
    if not models:
        raise cli.DataError(f"no trained Q2 run in {run_root}: run `make q2` (or q2_ecg.train)")
    patient_runs = [n for n in models if n.endswith("-patient")]
    seed = read_json(runs[patient_runs[0]] / "summary.json")["seed"] if patient_runs else 0
    if not external and patient_runs:
        base, base_preds = baselines(ctx, ctx.split("patient", seed))
        for k, v in base.items():
            models[f"{k}-patient"] = {**v, "description": DESCRIPTIONS[k], "split": "patient"}
        preds.update({f"{k}-patient": v for k, v in base_preds.items()})
    chosen = max((n for n in patient_runs if n.split("-")[0] in SOLUTIONS),
                 key=lambda n: max(h["score"] for h in histories[n]), default=None)
    result = {**provenance(test_source, device, seed), "trained_on": train_source.tag,
              "protocol": __doc__.split("Protocol: ")[1].strip(),
              "test_set": (f"every scored beat of {test_source.label}" if external
                           else "test patients of each run's split"),
              "chosen_model": chosen, "models": models,
              "leaky_vs_patient": compare_splits(models),
              "leave_one_database_out": lodo_table(models)}
    write_json(out_dir / "metrics.json", result)
    figures.write_all(out_dir / "figures", ctx if not external else test_ctx, models, preds,
                      histories, test_source.label)
    if args.save_predictions and chosen:
        p = preds[chosen]
        t = (test_ctx or ctx).table
        np.savez_compressed(args.save_predictions, patient_id=(test_ctx or ctx).patient[p["beats"]],
                            beat_loc=(test_ctx or ctx).records.beat_locs[p["beats"]],
                            pred=p["pred"].astype(np.int64), p_abnormal=p["p_abnormal"].astype(np.float32),
                            label=t.label[p["beats"]], model=chosen)
        print(f"predictions of {chosen} written to {args.save_predictions}")
    print_table(result)
    return result


HEADLINE = ("SVEB_f1", "VEB_f1", "normal_f1", "abnormal_se", "abnormal_ppv", "abnormal_f1",
            "abnormal_sp", "auroc")


def compare_splits(models: dict) -> dict:
    """Test numbers of the same model under the beat-level and the patient-level split."""
    out = {}
    for name in models:
        if name.endswith("-beat"):
            model = name.removesuffix("-beat")
            if f"{model}-patient" in models:
                out[model] = {split: {k: models[f"{model}-{split}"]["test"][k]["value"]
                                      for k in HEADLINE if k in models[f"{model}-{split}"]["test"]}
                              for split in ("beat", "patient")}
    return out


def lodo_table(models: dict) -> dict:
    """Per model, per held-out database: the headline test numbers."""
    out = {}
    for name, m in models.items():
        model, _, split = name.partition("-")
        if split.startswith("lodo-"):
            out.setdefault(model, {})[split.removeprefix("lodo-")] = {
                k: m["test"][k]["value"] for k in HEADLINE if k in m["test"]}
    return out


def print_table(result: dict) -> None:
    print(f"\nQ2 on {result['test_set']} ({result['data_label']})")
    print(f"{'run':<24}" + "".join(f"{k:>13}" for k in HEADLINE))
    for name, m in result["models"].items():
        print(f"{name:<24}" + "".join(f"{m['test'][k]['value']:>13.3f}" if k in m["test"]
                                      else f"{'-':>13}" for k in HEADLINE))


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
