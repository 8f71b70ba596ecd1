"""PyTorch's own weight averaging, for cairn's EMA and SWA tests.

  averaging_reference.py swalr OUT
      SWALR's learning rates for a grid of (start lr, swa lr, annealing
      epochs, strategy): one line per case, `start swa anneal strategy lr0 lr1 ...`
      (repr of each float, so a reader gets the exact bits).
  averaging_reference.py averages RUN.pt
      RUN.pt (written by the C++ test) holds the model's weights after every
      optimizer step (`steps`), at every epoch's end of training (`epoch_ends`),
      the batches of the training pass (`train_x`), cairn's averages and the
      options. Runs AveragedModel (EMA: get_ema_multi_avg_fn, use_buffers=True;
      SWA: the default running mean) and update_bn on the same weights and
      prints `NAME equal True|False max_abs_diff X` per comparison.
"""
import sys

import torch
from torch.optim import swa_utils

MAJOR = int(torch.__version__.split(".")[0])


def load(path):
    return torch.load(path, weights_only=True) if MAJOR >= 2 else torch.load(path)


def swalr():
    lines = []
    for start, swa in [(0.05, 0.01), (0.1, 0.3), (0.0123, 0.0007)]:
        for anneal in [0, 1, 2, 3, 7]:
            for strategy in ["cos", "linear"]:
                p = torch.nn.Parameter(torch.zeros(1))
                opt = torch.optim.SGD([p], lr=start)
                sched = swa_utils.SWALR(opt, swa_lr=swa, anneal_epochs=anneal, anneal_strategy=strategy)
                lrs = []
                for _ in range(12):
                    lrs.append(opt.param_groups[0]["lr"])
                    opt.step()
                    sched.step()
                lines.append(" ".join([repr(start), repr(swa), str(anneal), strategy] + [repr(x) for x in lrs]))
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(lines) + "\n")


class Net(torch.nn.Module):
    """The C++ test's Sequential(Linear(3, 4), BatchNorm1d(4), ReLU, Linear(4, 2))."""

    def __init__(self):
        super().__init__()
        self.seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                       torch.nn.Linear(4, 2))

    def forward(self, x):
        return self.seq(x)


def named(net, sd):
    """cairn's names ('0.weight') onto this module's ('seq.0.weight')."""
    return {"seq." + k: v for k, v in sd.items()}


def report(name, want, got_sd, keys=None):
    worst, equal = 0.0, True
    for k in (keys if keys is not None else want.keys()):
        a, b = want[k], got_sd["seq." + k]
        if a.dtype != b.dtype or a.shape != b.shape:
            print(f"{name} equal False max_abs_diff dtype-or-shape:{k}")
            return
        equal = equal and torch.equal(a, b)
        worst = max(worst, (a.double() - b.double()).abs().max().item())
    print(f"{name} equal {equal} max_abs_diff {worst!r}")


def averages():
    run = load(sys.argv[2])
    src = Net()
    # EMA as Lightning's EMAWeightAveraging builds it (torch >= 2.1 has the multi_avg_fn).
    if hasattr(swa_utils, "get_ema_multi_avg_fn"):
        src.load_state_dict(named(src, run["initial"]))
        ema = swa_utils.AveragedModel(src, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(float(run["decay"])),
                                      use_buffers=True)
        for sd in run["steps"]:
            src.load_state_dict(named(src, sd))
            ema.update_parameters(src)
        report("ema", run["ema_state_dict"], ema.module.state_dict())
    else:
        print("ema unavailable: this torch has no get_ema_multi_avg_fn (2.1 and later have it)")
    # SWA: the running mean of the epoch-end weights, then update_bn over the training pass.
    src.load_state_dict(named(src, run["initial"]))
    swa = swa_utils.AveragedModel(src)
    for sd in run["epoch_ends"]:
        src.load_state_dict(named(src, sd))
        swa.update_parameters(src)
    params = [k for k, _ in Net().seq.named_parameters()]
    report("swa", run["swa_state_dict"], swa.module.state_dict(), params)
    loader = [x for x in run["train_x"]]
    swa_utils.update_bn(loader, swa.module)
    report("update_bn", run["final"], swa.module.state_dict())


def load_mlp():
    """load_mlp FILE FEATURES HIDDEN CLASSES: cairn's mlp of dropout 0 (Flatten, (Linear, ReLU)*, Linear)
    takes FILE, a plain state_dict, with strict=True."""
    sd = load(sys.argv[2])
    features, hidden, classes = int(sys.argv[3]), [int(h) for h in sys.argv[4].split(",")], int(sys.argv[5])
    layers, n = [torch.nn.Flatten()], features
    for h in hidden:
        layers += [torch.nn.Linear(n, h), torch.nn.ReLU()]
        n = h
    layers.append(torch.nn.Linear(n, classes))
    m = torch.nn.Sequential(*layers)
    m.load_state_dict(sd, strict=True)
    print("loaded", len(sd), "tensors with strict=True")


if sys.argv[1] == "swalr":
    swalr()
elif sys.argv[1] == "load_mlp":
    load_mlp()
elif sys.argv[1] == "averages":
    averages()
else:
    sys.exit("unknown mode " + sys.argv[1])
