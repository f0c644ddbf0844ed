"""A progress sink that records every event, for the tests that check what a producer reports."""

from __future__ import annotations

from collections.abc import Callable

from ffnet_deploy.progress import Events


class Recording(Events):
    """Every event as a tuple: ``("stage", name)``, ``("step", done, total, label)``, ``("note", text)``,
    ``("warn", text)``; ``on_step`` (optional) runs after each step is recorded (e.g. to look at the disk then)."""

    def __init__(self, on_step: Callable[[float, float, str], None] | None = None) -> None:
        self.events: list[tuple] = []
        self.on_step = on_step

    def stage(self, name: str) -> None:
        self.events.append(("stage", name))

    def step(self, done: float, total: float, label: str = "") -> None:
        self.events.append(("step", done, total, label))
        if self.on_step is not None:
            self.on_step(done, total, label)

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    def warn(self, text: str) -> None:
        self.events.append(("warn", text))

    def steps(self, label: str | None = None) -> list[tuple[float, float]]:
        """``(done, total)`` of the steps (of ``label`` only, when given)."""
        return [(e[1], e[2]) for e in self.events if e[0] == "step" and (label is None or e[3] == label)]

    def notes(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "note"]


def record_feeds(monkeypatch) -> list[int]:
    """The batch size of every ONNX Runtime call from now on (the list fills as the runners are called)."""
    from ffnet_deploy.runtimes.onnxruntime import OnnxRuntimeRunner

    fed: list[int] = []
    real_infer = OnnxRuntimeRunner.infer

    def infer(self, feed):
        fed.append(next(iter(feed.values())).shape[0])
        return real_infer(self, feed)

    monkeypatch.setattr(OnnxRuntimeRunner, "infer", infer)
    return fed
