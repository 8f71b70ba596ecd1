"""A user's own model and data from Python, for `model: torchscript` and
`data: tensors` (tests/test_user_model.cpp).

  user_model.py make DIR [traced]   writes DIR/model.pt (scripted or traced CNN) and DIR/data.pt
  user_model.py check DIR CKPT      loads CKPT's state_dict into the Python module, prints
                                    its test accuracy and the state_dict's names
  user_model.py bad DIR             writes broken data files DIR/bad_*.pt
"""
import sys

import torch
from torch import nn


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.head(self.drop(x))


def data(seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 1, 8, 8, generator=g) * 0.5

    def make(n):
        y = torch.randint(0, 3, (n,), generator=g)
        x = centres[y] + torch.randn(n, 1, 8, 8, generator=g)
        return x, y

    train_x, train_y = make(768)
    test_x, test_y = make(192)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "make":
        torch.manual_seed(0)
        m = SmallCnn()
        if len(sys.argv) > 3 and sys.argv[3] == "traced":
            m = torch.jit.trace(m, torch.zeros(2, 1, 8, 8))
        else:
            m = torch.jit.script(m)
        m.save(f"{d}/model.pt")
        torch.save(data(1), f"{d}/data.pt")
    elif cmd == "check":
        m = torch.jit.load(f"{d}/model.pt")
        # PyTorch 1.13's weights-only unpickler lacks BINFLOAT (see read_checkpoint.py);
        # from 2.0 on, the safe loader reads cairn's checkpoints.
        safe = int(torch.__version__.split(".")[0]) >= 2
        sd = torch.load(sys.argv[3], weights_only=safe)["state_dict"]
        m.load_state_dict(sd)  # strict: every name matches the Python module's
        m.eval()
        t = torch.load(f"{d}/data.pt")
        with torch.no_grad():
            acc = (m(t["test_x"]).argmax(1) == t["test_y"]).float().mean().item()
        print(f"acc {acc:.9f}")
        print("names " + " ".join(sorted(sd)))
    elif cmd == "bad":
        good = data(1)
        torch.save({k: v for k, v in good.items() if k != "train_y"}, f"{d}/bad_missing.pt")
        torch.save(dict(good, train_y=good["train_y"][:10]), f"{d}/bad_length.pt")
        torch.save(dict(good, train_y=good["train_y"].float()), f"{d}/bad_dtype.pt")
        torch.save(dict(good, extra=torch.zeros(1)), f"{d}/bad_key.pt")
        torch.save(dict(good, test_x=torch.zeros(192, 1, 4, 4)), f"{d}/bad_shape.pt")
        torch.save([good["train_x"]], f"{d}/bad_list.pt")


if __name__ == "__main__":
    main()
