"""Plots drawn inside panels (matplotlib on a Qt canvas)."""

from __future__ import annotations


class LossCurve:
    """A small matplotlib canvas: step losses, and per-epoch train/validation loss and validation r."""

    def __init__(self, metric: str = "val mean r"):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.2), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self.metric = metric
        self.reset()

    def reset(self):
        self.steps, self.epochs, self.train, self.val, self.val_r = [], [], [], [], []
        self._n = 0
        self.redraw()

    def add_step(self, loss: float, steps_per_epoch: int):
        self._n += 1
        self.steps.append((self._n / max(1, steps_per_epoch), loss))

    def add_epoch(self, ev: dict):
        self.epochs.append(len(self.epochs) + 1)  # several runs (e.g. one per patch size) go end to end
        self.train.append(ev["train_loss"])
        self.val.append(ev.get("val_loss", float("nan")))
        self.val_r.append(ev.get("metric", ev.get("val_mean_r", float("nan"))))
        self.redraw()

    def redraw(self):
        ax, ax2 = self.ax, self.ax2
        ax.clear()
        ax2.clear()
        if self.steps:
            x, y = zip(*self.steps)
            ax.plot(x, y, color="0.75", lw=0.6, label="step")
        if self.epochs:
            ax.plot(self.epochs, self.train, "o-", ms=3, label="train")
            ax.plot(self.epochs, self.val, "s-", ms=3, label="val")
            ax2.plot(self.epochs, self.val_r, "^-", ms=3, color="tab:green", label=self.metric)
            ax2.set_ylabel(self.metric, fontsize=7)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylabel("loss", fontsize=7)
        ax.tick_params(labelsize=6)
        ax2.tick_params(labelsize=6)
        if self.epochs or self.steps:
            ax.legend(fontsize=6, loc="upper right")
        self.canvas.draw_idle()
