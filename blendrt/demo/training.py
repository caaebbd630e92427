"""The optimizer, schedule and step shared by the demo trainers (`blendrt.demo.train`,
`blendrt.demo.train_reward`): AdamW with warmup and cosine decay, gradient clipping, an EMA of
the loss and a progress line every 100 steps."""

from __future__ import annotations

import math
import time

import torch


class Stepper:
    """AdamW (lr, betas, weight_decay) with a linear warmup over steps // 20 steps, then a
    cosine decay to 5% of lr at `steps`; `step(loss)` backpropagates the loss, clips the
    gradient norm to 1, steps the optimizer and the schedule, updates the loss EMA (weight
    ema_weight to the new loss) and prints ``  {label}step i/steps loss ...`` at every
    100th step and the last."""

    def __init__(
        self,
        model: torch.nn.Module,
        steps: int,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        ema_weight: float,
        label: str = "",
    ) -> None:
        self.params = list(model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        warmup = max(1, steps // 20)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda s: min(
                (s + 1) / warmup, 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))
            ),
        )
        self.steps, self.ema_weight, self.label = steps, ema_weight, label
        self.done, self.ema = 0, None
        self.start = time.perf_counter()

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        value, w = loss.item(), self.ema_weight
        self.ema = value if self.ema is None else (1 - w) * self.ema + w * value
        step, self.done = self.done, self.done + 1
        if step % 100 == 0 or step == self.steps - 1:
            print(
                f"  {self.label}step {step:4d}/{self.steps} loss {value:.3f} "
                f"ema {self.ema:.3f} ({time.perf_counter() - self.start:.0f}s)",
                flush=True,
            )
