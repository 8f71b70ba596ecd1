"""Learning rates from PyTorch's own schedulers, for cairn's scheduler tests.

Prints one line per scheduler: NAME lr0 lr1 ... (the lr before each step()),
for 40 steps of a one-parameter SGD with lr 0.1. ReduceLROnPlateau is fed the
metric sequence METRICS below.
"""
import math

import torch

STEPS = 40
METRICS = [1.0, 0.9, 0.95, 0.95, 0.96, 0.97, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.49, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7] * 2


def run(name, make, metric=False):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    lrs = []
    for i in range(STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if metric:
            sched.step(METRICS[i])
        else:
            sched.step()
    print(name, " ".join(repr(x) for x in lrs))


S = torch.optim.lr_scheduler
run("step", lambda o: S.StepLR(o, step_size=7, gamma=0.5))
run("multistep", lambda o: S.MultiStepLR(o, milestones=[5, 12, 30], gamma=0.3))
run("exponential", lambda o: S.ExponentialLR(o, gamma=0.93))
run("cosine", lambda o: S.CosineAnnealingLR(o, T_max=40, eta_min=0.001))
run("linear_warmup", lambda o: S.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=10))
run("one_cycle", lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=41, pct_start=0.25, cycle_momentum=False,
                                          div_factor=20.0, final_div_factor=100.0))
run("plateau_min", lambda o: S.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=2, threshold=0.01, cooldown=1,
                                                 min_lr=0.01), metric=True)
run("plateau_max_abs", lambda o: S.ReduceLROnPlateau(o, mode="max", factor=0.2, patience=1, threshold=0.05,
                                                     threshold_mode="abs"), metric=True)
