"""scikit-learn's and torchmetrics' values for cairn's metric tests.

  metric_reference.py CASES.pt

CASES.pt (written by the C++ test) maps a case name to {"kind", "output",
"target", "cairn": {metric: [value per batch split]}, ...}. Each cairn value is
compared with scikit-learn (and torchmetrics, where installed) on all the
data at once. Prints one line per comparison and the largest relative
difference; exits 1 when one differs by more than 1e-12 (relative).
"""
import math
import sys

import numpy as np
import torch
from sklearn import metrics as skm

try:
    import torchmetrics.functional.classification as tmc
    import torchmetrics.functional.regression as tmr
except ImportError:
    tmc = tmr = None
    print("torchmetrics unavailable")

cases = torch.load(sys.argv[1], weights_only=True) if int(torch.__version__.split(".")[0]) >= 2 else torch.load(sys.argv[1])
worst = 0.0
worst_float32 = [0.0]
failed = []
compared = 0


def same(case, metric, ref_name, want, got_list, tol=1e-12):
    """tol is relative: 1e-12 against float64 references (scikit-learn), 1e-6
    against torchmetrics, which computes these in float32."""
    global worst, compared
    for got in got_list:
        got = float(got)
        compared += 1
        if math.isnan(want) or math.isnan(got):
            ok = math.isnan(want) and math.isnan(got)
            diff = 0.0 if ok else float("inf")
        else:
            diff = abs(got - want) / max(1.0, abs(want))
            ok = diff <= tol
        if tol <= 1e-12:
            worst = max(worst, diff)
        else:
            worst_float32[0] = max(worst_float32[0], diff)
        print(f"{case} {metric} vs {ref_name}: cairn {got!r} reference {want!r} diff {diff:.3g} {'ok' if ok else 'BAD'}")
        if not ok:
            failed.append(f"{case} {metric} vs {ref_name}")


for name, c in cases.items():
    kind = c["kind"]
    out, y = c["output"].double(), c["target"]
    got = c["cairn"]
    if kind == "multiclass":
        ignore = int(c["ignore_index"])
        keep = y != ignore
        yt = y[keep].numpy()
        pred = out.argmax(1)[keep].numpy()
        labels = list(range(out.shape[1]))
        same(name, "acc", "sklearn", skm.accuracy_score(yt, pred), got["acc"])
        same(name, "top3_acc", "sklearn", skm.top_k_accuracy_score(yt, out[keep].numpy(), k=3, labels=labels), got["top3_acc"])
        for avg in ["macro", "micro", "weighted"]:
            same(name, "f1_" + avg, "sklearn", skm.f1_score(yt, pred, average=avg), got["f1_" + avg])
        if tmc is not None:
            C = out.shape[1]
            same(name, "acc", "torchmetrics", tmc.multiclass_accuracy(out, y, C, average="micro", ignore_index=ignore).item(), got["acc"], 1e-6)
            same(name, "top3_acc", "torchmetrics",
                 tmc.multiclass_accuracy(out, y, C, average="micro", top_k=3, ignore_index=ignore).item(), got["top3_acc"],
                 1e-6)
            for avg in ["macro", "micro", "weighted"]:
                same(name, "f1_" + avg, "torchmetrics",
                     tmc.multiclass_f1_score(out, y, C, average=avg, ignore_index=ignore).item(), got["f1_" + avg], 1e-6)
    elif kind == "binary":
        yt = (y.reshape(-1) > 0.5).long().numpy()
        pred = (out.reshape(-1) > 0).long().numpy()
        same(name, "acc", "sklearn", skm.accuracy_score(yt, pred), got["acc"])
        for avg in ["macro", "micro", "weighted"]:
            same(name, "f1_" + avg, "sklearn", skm.f1_score(yt, pred, average=avg), got["f1_" + avg])
    elif kind == "multilabel":
        yt = (y > 0.5).long().numpy()
        pred = (out > 0).long().numpy()
        for avg in ["macro", "micro", "weighted"]:
            same(name, "f1_" + avg, "sklearn", skm.f1_score(yt, pred, average=avg, zero_division=0), got["f1_" + avg])
        if tmc is not None:
            L = out.shape[1]
            for avg in ["macro", "micro", "weighted"]:
                # Logits outside [0, 1] get a sigmoid and the threshold 0.5: logit > 0, as cairn.
                same(name, "f1_" + avg, "torchmetrics",
                     tmc.multilabel_f1_score(out, (y > 0.5).long(), L, average=avg).item(), got["f1_" + avg], 1e-6)
    elif kind == "auroc":
        yt = y.reshape(-1).long()
        same(name, "auroc", "sklearn", skm.roc_auc_score(yt.numpy(), out.numpy()), got["auroc"])
        if tmc is not None:
            same(name, "auroc", "torchmetrics", tmc.binary_auroc(out, yt).item(), got["auroc"], 1e-6)
    elif kind == "r2":
        yt, o = y.double().numpy(), c["output"].double().numpy()
        if c.get("constant", False):
            # A constant column: scikit-learn's force_finite=False answers nan or -inf; cairn says NaN.
            ref = skm.r2_score(yt, o, force_finite=False)
            print(f"{name} r2 reference (force_finite=False) {ref!r}")
            same(name, "r2", "NaN", float("nan"), got["r2"])
        else:
            same(name, "r2", "sklearn", skm.r2_score(yt, o), got["r2"])
            if tmr is not None:
                ref = tmr.r2_score(c["output"].double(), y.double()).item()
                if c.get("far_from_zero", False):
                    # Shown, not compared: torchmetrics takes a column whose squared errors sum below
                    # 1e-4 as perfect (1.0), and its uncentred sums (sum y^2 - n mean^2) cancel far from 0.
                    print(f"{name} r2 torchmetrics (uncentred) {ref!r}: off by {abs(ref - float(got['r2'][0])):.3g}")
                else:
                    same(name, "r2", "torchmetrics", ref, got["r2"], 1e-9)
    else:
        sys.exit("unknown kind " + kind)

print(f"compared {compared} values; largest relative difference {worst:.3g} "
      f"(float64 references), {worst_float32[0]:.3g} (torchmetrics, float32)")
if failed:
    print("MISMATCH: " + ", ".join(failed))
    sys.exit(1)
