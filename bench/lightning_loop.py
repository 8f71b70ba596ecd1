"""The bench_loop workload in Lightning, with what its Trainer attaches by
default (a checkpoint, a logger, a progress bar sent to /dev/null), plus
early stopping as cairn's side has; prints the median steps/s, or nothing
when Lightning is not installed.

usage: lightning_loop.py EPOCHS REPEATS [DEVICE [STEPS]]   (as python_loop.py)
"""
import os
import sys
import tempfile
import time
import warnings

epochs, repeats = int(sys.argv[1]), int(sys.argv[2])
args = sys.argv[3:]
try:
    import lightning as L
except ImportError:
    sys.exit(0)
import torch

sys.argv = [sys.argv[0], "0", "0"] + args  # python_loop.py's data only (its loop runs as a script)
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
warnings.filterwarnings("ignore")
import python_loop as data  # noqa: E402

torch.set_num_threads(1)


class Mlp(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 10))

    def training_step(self, batch, _):
        x, y = batch
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        self.log("train/acc", logits.argmax(1).eq(y).float().mean(), on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.net(x)
        self.log("valid/loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("valid/acc", logits.argmax(1).eq(y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def run():
    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.xt, data.yt), batch_size=64, shuffle=True)
    valid = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.xv, data.yv), batch_size=64)
    with tempfile.TemporaryDirectory() as d, open(os.devnull, "w") as null:
        trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if data.device == "cuda" else "cpu", devices=1, default_root_dir=d, log_every_n_steps=50,
                            callbacks=[L.pytorch.callbacks.EarlyStopping("valid/loss", patience=100),
                                       L.pytorch.callbacks.ModelCheckpoint(monitor="valid/acc", mode="max")],
                            enable_model_summary=False)
        out, sys.stdout, sys.stderr = (sys.stdout, sys.stderr), null, null
        try:
            t0 = time.perf_counter()
            trainer.fit(Mlp(), train, valid)
            elapsed = time.perf_counter() - t0
        finally:
            sys.stdout, sys.stderr = out
    return trainer.global_step / elapsed


rates = sorted(run() for _ in range(repeats))
print(rates[len(rates) // 2])
