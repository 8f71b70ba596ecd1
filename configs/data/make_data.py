"""Makes the small data sets and the TorchScript model that the configs in
configs/ train on (the files next to this script). Deterministic: the same
files come out on every run.

    /usr/bin/python3 configs/data/make_data.py     # Debian's python3-torch

TorchScript files are saved by the oldest LibTorch cairn supports (1.13), so
that both supported versions can load them.
"""
import csv
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
g = torch.Generator().manual_seed(2026)


def split(x, y, n_test):
    return {"train_x": x[:-n_test].contiguous(), "train_y": y[:-n_test].contiguous(),
            "test_x": x[-n_test:].contiguous(), "test_y": y[-n_test:].contiguous()}


# Regression: 8 features, 2 smooth nonlinear targets with noise -> y [N, 2].
x = torch.randn(2400, 8, generator=g)
w = torch.randn(8, 2, generator=g) / 2
y = torch.sin(x @ w) * 2 + 0.5 * (x[:, :2] ** 2) + 0.1 * torch.randn(2400, 2, generator=g)
torch.save(split(x, y, 400), os.path.join(HERE, "regression.pt"))


class Regressor(torch.nn.Module):
    """The user's own model, as a TorchScript file: 8 -> 64 -> 64 -> 2 with SiLU."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                                        torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x):
        return self.body(x)


torch.manual_seed(7)
torch.jit.script(Regressor()).save(os.path.join(HERE, "regressor.pt"))

# Multi-label: 16 features, 6 labels, each on when its own linear score is high -> y [N, 6] of 0/1 floats.
x = torch.randn(2000, 16, generator=g)
w = torch.randn(16, 6, generator=g)
labels = ((x @ w) + 0.8 * torch.randn(2000, 6, generator=g) > 1.0).float()
torch.save(split(x, labels, 400), os.path.join(HERE, "multilabel.pt"))

# Tabular CSV: a binary outcome from 5 numeric columns (a customer-churn-like table).
rows = []
for i in range(1500):
    tenure = float(torch.randint(1, 72, (1,), generator=g))
    monthly = float(20 + 100 * torch.rand(1, generator=g))
    tickets = float(torch.poisson(torch.tensor([1.5]), generator=g))
    age = float(torch.randint(18, 80, (1,), generator=g))
    discount = float(torch.rand(1, generator=g) < 0.3)
    score = -0.05 * tenure + 0.02 * monthly + 0.6 * tickets - 0.8 * discount + 0.01 * (age - 45)
    score += float(torch.randn(1, generator=g))
    rows.append([tenure, round(monthly, 2), tickets, age, discount, int(score > 0.3)])
header = ["tenure", "monthly", "tickets", "age", "discount", "churned"]
for name, part in (("tabular_train.csv", rows[:1200]), ("tabular_test.csv", rows[1200:])):
    with open(os.path.join(HERE, name), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for r in part:
            out.writerow([int(v) if float(v).is_integer() else v for v in r])
print("wrote", sorted(n for n in os.listdir(HERE) if not n.endswith(".py")))
