"""A training progress bar with loss, real tokens/s and ETA."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tunelab.util.console import console

__all__ = ["TrainProgress", "task_progress"]


def task_progress() -> Progress:
    """A generic bar (count, elapsed, ETA) for evaluation and generation loops."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)


class TrainProgress:
    def __init__(self, total_steps: int):
        self.progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        )
        self.task = self.progress.add_task("train", total=total_steps, loss="-", tps="-")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")
        if not console.is_terminal:
            self._log_line(step, loss, tokens_per_s)

    def _log_line(self, step: int, loss: float, tokens_per_s: float) -> None:
        # Logs and CI have no live bar: print a line about every 10% of the run instead.
        total = self.progress.tasks[0].total or 1
        if step == 1 or step == total or step % max(1, int(total) // 10) == 0:
            task = self.progress.tasks[0]
            eta = task.time_remaining
            eta_s = f"{eta:.0f}s" if eta is not None else "?"
            console.print(f"step {step}/{int(total)} · loss {loss:.4f} · {tokens_per_s:,.0f} tok/s · eta {eta_s}")
