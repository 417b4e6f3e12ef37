"""Where the user waits: the real widgets in a real napari viewer, timed click to overlay.

Run under a display (``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_viewer.py``).
The script opens napari, opens a phantom (BreakHis size) through histoview's reader as a
user would (File > Open), opens each dock widget through the Plugins menu's entry
(``add_plugin_dock_widget``) with nothing preset, presses its main button and waits for the
overlay. A 10 ms Qt timer runs all the time; the longest interval between two of its ticks is
the longest the event loop was blocked (the viewer was frozen).

Each explanation dock's button is pressed twice (the second time the same settings on the
same image: nothing is recomputed or inserted); "Run all" runs after the single methods,
again, and at the end on a second image nothing was computed for. ``--read-docks S`` waits
S seconds after opening each dock (the docks load their models in the background meanwhile).

Printed per action: wall time (click to overlay), CPU time (all threads and the main
thread), the longest event-loop gap and the most main-thread CPU between two ticks. Goals
(issue "A pathologist's first session works at the first click"): gap <= 100 ms for every
action; click to overlay <= 0.5 s per method; "Run all methods" with agreement and
faithfulness <= 3 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

#: zoom steps in the zoom actions, one draw of the whole scene each
ZOOM_FRAMES = 20


class GapMeter:
    """Longest interval between ticks of a 10 ms timer on the Qt event loop.

    Also the most CPU time the main thread used within one interval (``longest_cpu``,
    ``time.thread_time``): on a machine shared with other work the wall-clock gap grows with
    the load, the main thread's own CPU time much less; on an idle machine they agree.
    """

    def __init__(self, interval_ms: int = 10, long: float = 0.1):
        from qtpy.QtCore import QTimer

        self.long = long  # a gap over this is listed in ``long_gaps``
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.running = False
        self.reset()

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.longest = max(self.longest, now - self.last)
        self.longest_cpu = max(self.longest_cpu, cpu - self.last_cpu)
        if now - self.last > self.long:  # (when, wall, main-thread CPU) of each long gap
            self.long_gaps.append((self.last, now - self.last, cpu - self.last_cpu))
        self.last, self.last_cpu = now, cpu

    def start(self) -> None:
        self.reset()
        self.running = True
        self.timer.start()

    def reset(self) -> None:
        self.last, self.last_cpu = time.perf_counter(), time.thread_time()
        self.longest = self.longest_cpu = 0.0
        self.long_gaps: list[tuple[float, float, float]] = []

    def stop(self) -> float:
        self._tick()
        self.running = False
        self.timer.stop()
        return self.longest


class StallSampler:
    """What the main thread was doing while it blocked the event loop (``--sample``).

    A background thread reads the main thread's stack every 5 ms; while the gap meter has not
    ticked for over 30 ms (the event loop is blocked) the stack is counted. :meth:`report`
    prints, per action, the functions seen most often in those stacks (cumulative: a frame
    counts once per sample; the benchmark's own frames left out) and the innermost frames,
    and what the other threads were doing (a worker holding the GIL in C code blocks the
    main thread too). ``--sample-out DIR`` also writes each action's stacks, folded (one
    ``frame;frame;... count`` line per stack, as flame-graph tools read them).
    """

    def __init__(self, meter: GapMeter, period: float = 0.005, blocked: float = 0.03, out=None):
        import threading

        self.meter, self.period, self.blocked, self.out = meter, period, blocked, out
        self.main_id = threading.main_thread().ident
        self.stacks: Counter = Counter()
        self.others: Counter = Counter()
        self._gap, self._gap_stacks = None, Counter()  # the blocked interval being sampled
        self.worst: Counter = Counter()  # the stacks of the longest one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _frames(frame) -> list[str]:
        out = []
        while frame is not None:
            code = frame.f_code
            short = "/".join(code.co_filename.split("/")[-2:])
            out.append(f"{short}:{code.co_name}")
            frame = frame.f_back
        return out[::-1]  # root first

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if time.perf_counter() - self.meter.last < self.blocked or not self.meter.running:
                continue
            frames = sys._current_frames()
            main = frames.get(self.main_id)
            if main is None:
                continue
            stack = tuple(f for f in self._frames(main) if not f.startswith("benchmarks/"))
            self.stacks[stack] += 1
            if self.meter.last != self._gap:
                self._gap, self._gap_stacks = self.meter.last, Counter()
            self._gap_stacks[stack] += 1
            if sum(self._gap_stacks.values()) > sum(self.worst.values()):
                self.worst = self._gap_stacks
            for ident, frame in frames.items():
                if ident not in (self.main_id, self._thread.ident):
                    leaf = self._frames(frame)[-1:]
                    if leaf:
                        self.others[leaf[0]] += 1

    def report(self, name: str, top: int = 20) -> None:
        ms = self.period * 1000
        samples = sum(self.stacks.values())
        if samples:
            cumulative, leaves = Counter(), Counter()
            for stack, n in self.stacks.items():
                for frame in dict.fromkeys(stack):
                    cumulative[frame] += n
                leaves[stack[-1] if stack else "?"] += n
            print(f"  -- main thread blocked ~{samples * ms:.0f} ms; most seen frames:")
            for frame, n in cumulative.most_common(top):
                print(f"     {n * ms:7.0f} ms  {frame}")
            print("     innermost:")
            for frame, n in leaves.most_common(8):
                print(f"     {n * ms:7.0f} ms  {frame}")
            for frame, n in self.others.most_common(3):
                print(f"     (other thread) {n * ms:7.0f} ms  {frame}")
            print(f"     the longest blocked interval (~{sum(self.worst.values()) * ms:.0f} ms):")
            for stack, n in self.worst.most_common(3):
                print(f"     {n * ms:7.0f} ms  " + " > ".join(stack[-7:]))
            if self.out is not None:
                safe = "".join(c if c.isalnum() else "_" for c in name)
                with open(Path(self.out) / f"{safe}.folded", "w") as f:
                    for stack, n in self.stacks.most_common():
                        f.write(";".join(stack) + f" {n}\n")
        self.stacks.clear()
        self.others.clear()
        self.worst, self._gap = Counter(), None


SAMPLER: StallSampler | None = None
DRAWS = [0]  # canvas draws so far (--sample)


def process(app) -> None:
    """One turn of the event loop as ``app.exec()`` runs it: the pending events, and the
    objects deleted with ``deleteLater`` (``processEvents`` alone never deletes those: napari's
    activity indicator, which stops when File > Open's progress bar is deleted, then kept
    spinning for the whole benchmark and repainted the window ~16 times a second, which
    under software OpenGL took CPU from everything measured after the image was opened)."""
    from qtpy.QtCore import QCoreApplication, QEvent

    app.processEvents()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def pump(app, until, timeout: float = 120.0) -> float:
    """Run the event loop until ``until()`` is true; returns the seconds it took."""
    t0 = time.perf_counter()
    while not until():
        process(app)
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the action did not finish in time")
    process(app)
    return time.perf_counter() - t0


def explanation_layers(viewer) -> list:
    return [lay for lay in viewer.layers if "histoview_explanation" in lay.metadata]


def finished(viewer, widget) -> bool:
    """The explain widget's run ended with its overlay shown (an error raises)."""
    text = str(widget.result.value)
    if text.startswith("error"):
        raise RuntimeError(f"the widget failed: {text}")
    return not widget.busy and widget.last_explanation is not None


def read(app, seconds: float) -> None:
    """Let the event loop run for ``seconds`` (a user reading a dock before pressing)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        process(app)
        time.sleep(0.01)


def explain_classes(widget, method: str) -> list[str]:
    """The class choices of the explain widget for ``method`` ("predicted" first)."""
    widget.method_choice.value = method
    return [c for c in widget.class_choice.choices if c is not None]


def click(widget):
    """Press the explain widget's button (its last result forgotten, to wait for the new one)."""

    def action():
        widget.last_explanation = None
        widget.run()

    return action


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name of this process (Linux ``/proc``; {} elsewhere)."""
    out: dict[str, float] = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return out
    tick = 100.0
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return out


def timed(app, meter, rows, name, action, until, timeout=300.0):
    meter.start()
    t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
    threads0 = thread_cpu() if SAMPLER is not None else {}
    draws0 = DRAWS[0]
    action()
    pump(app, until, timeout)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    main_cpu = time.thread_time() - m0
    gap = meter.stop()
    rows.append((name, wall, gap, meter.longest_cpu))
    print(
        f"{name:44s} {wall:6.2f} s (CPU {cpu:5.2f} s, main thread {main_cpu:5.2f} s)"
        f"   longest gap {gap * 1000:5.0f} ms"
        f" (most main-thread CPU between ticks {meter.longest_cpu * 1000:4.0f} ms)",
        flush=True,
    )
    if SAMPLER is not None:
        spent = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu().items()}
        busy = sorted(((v, k) for k, v in spent.items() if v >= 0.05), reverse=True)
        print(
            f"  -- {DRAWS[0] - draws0} canvas draws; CPU by thread: "
            + ", ".join(f"{k} {v:.2f} s" for v, k in busy)
        )
        SAMPLER.report(name)


def first_dock(app, viewer, meter, rows, open_dock, docks) -> int:
    """``--first-dock``: the Attention-MIL dock opened first in a fresh session, timed from
    the menu entry until its model box is filled and its model loaded (the background
    warm-up); nothing else imported torch before (said in the output)."""
    from histoview.viewer import _models

    print(f"(torch imported before the dock opened: {'torch' in sys.modules})")
    timed(app, meter, rows, "open the Attention-MIL dock", open_dock("Attention-MIL"), lambda: True)
    widget = docks["Attention-MIL"]
    print(f"(model box filled as the dock appeared: {widget.model_choice.value is not None})")
    timed(
        app,
        meter,
        rows,
        "... until its model list and model are ready",
        lambda: None,
        lambda: widget.model_choice.value is not None and _models.cached_models() >= 1,
    )
    worst = max(gap for _, _, gap, _ in rows[1:])
    print(f"\nlongest event-loop gap from opening the dock to ready: {worst * 1000:.0f} ms")
    viewer.close()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--zoom-explanations",
        type=int,
        default=10,
        help="explanations loaded for the zoom and view-switching test",
    )
    parser.add_argument(
        "--read-docks",
        type=float,
        default=0.0,
        help="seconds a user reads each dock before pressing its button (the event loop "
        "runs meanwhile; 0: pressed at once, the worst case)",
    )
    parser.add_argument(
        "--look",
        type=float,
        default=0.0,
        help="seconds a user looks at the opened image before opening the first dock (timed "
        "as an action of its own: what runs in the background meanwhile shows as its gaps; "
        "0: the docks open at once, the worst case)",
    )
    parser.add_argument(
        "--first-dock",
        action="store_true",
        help="only open the image and the first explanation dock, timed until the dock's "
        "model list is filled and its model loaded in the background (the freeze a user "
        "meets first), then stop",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="print what the main thread did while it blocked the event loop, per action",
    )
    parser.add_argument(
        "--sample-out", type=Path, default=None, help="folder for the folded stacks (--sample)"
    )
    args = parser.parse_args(argv)

    import napari
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom

    tmp = Path(tempfile.mkdtemp())
    ph = make_phantom("invasive", preset="breakhis", seed=123)
    path = tmp / "SOB_M_DC-phantom-100-001.png"
    Image.fromarray(ph.image).save(path)

    viewer = napari.Viewer(show=True)
    # napari restores the window's last size from its settings: start from the same one
    # every run (software GL's cost grows with the canvas). The docks open as tabs of one
    # dock area, as on a screen of this size: stacked, four docks' minimum heights would
    # make the window (and the canvas) taller than the screen under Xvfb, which has no
    # window manager to stop it.
    viewer.window._qt_window.resize(1600, 1000)
    app = napari.qt.get_qapp()
    meter = GapMeter()
    global SAMPLER
    if args.sample_out is not None:
        args.sample_out.mkdir(parents=True, exist_ok=True)
    SAMPLER = StallSampler(meter, out=args.sample_out) if args.sample else None
    if args.sample:
        scene = getattr(getattr(viewer.window, "_qt_viewer", None), "canvas", None)
        scene = getattr(scene, "_scene_canvas", None)
        if scene is not None:
            scene.events.draw.connect(lambda _e: DRAWS.__setitem__(0, DRAWS[0] + 1))
    rows: list[tuple[str, float, float, float]] = []

    timed(
        app,
        meter,
        rows,
        "open image (reader)",
        lambda: viewer.open(path, plugin="histoview"),
        lambda: len(viewer.layers) == 1,
    )

    if args.look > 0:
        end = time.perf_counter() + args.look
        timed(
            app,
            meter,
            rows,
            f"look at the image for {args.look:g} s",
            lambda: None,
            lambda: time.perf_counter() >= end,
        )

    docks = {}

    def open_dock(display):
        return lambda: docks.__setitem__(
            display, viewer.window.add_plugin_dock_widget("histoview", display, tabify=True)[1]
        )

    if args.first_dock:
        return first_dock(app, viewer, meter, rows, open_dock, docks)

    # each dock opened from the Plugins menu and its button pressed at once (the first click
    # includes importing and loading what the method needs), then pressed again: the same
    # settings on the same image (the overlay's data swapped, no layer added)
    for display in ("Attention-MIL", "Nuclei graph", "Grad-CAM"):
        timed(app, meter, rows, f"open the {display} dock", open_dock(display), lambda: True)
        widget = docks[display]
        read(app, args.read_docks)
        for when in ("click to overlay", "again"):
            timed(
                app,
                meter,
                rows,
                f"{display}: {when}",
                click(widget),
                lambda w=widget: finished(viewer, w),
            )

    timed(
        app,
        meter,
        rows,
        "open the Compare methods dock",
        open_dock("Compare methods"),
        lambda: True,
    )
    compare = docks["Compare methods"]
    read(app, args.read_docks)
    timed(
        app,
        meter,
        rows,
        "Run all methods (+ agreement, faithfulness)",
        lambda: compare.run_all(then_side_by_side=False),
        lambda: not compare.running,
    )

    timed(
        app,
        meter,
        rows,
        "Run all methods again",
        lambda: compare.run_all(then_side_by_side=False),
        lambda: not compare.running,
    )

    # more explanations for the view tests: other classes and settings, each a new overlay
    _, explain = viewer.window.add_plugin_dock_widget(
        "histoview", "Explain (all methods)", tabify=True
    )
    process(app)
    settings = [
        (method, cls, imp)
        for method in ("gradcam", "dt-gradcam", "gradcam++", "graph", "amil")
        for cls in explain_classes(explain, method)
        for imp in (("attention", "occlusion") if method == "graph" else ("auto",))
    ]
    for method, cls, imp in settings:
        if len(explanation_layers(viewer)) >= args.zoom_explanations:
            break
        explain.method_choice.value = method
        explain.class_choice.value = cls
        explain.importance_choice.value = imp
        click(explain)()
        pump(app, lambda: finished(viewer, explain))
    print(f"({len(explanation_layers(viewer))} explanation layers loaded)")

    # the compare dock's buttons, as a user presses them; the first switch makes the panels'
    # layers (one per event-loop turn), later switches reuse them
    def side_by_side_shown():
        return compare.side_by_side_on and not compare.running

    timed(
        app,
        meter,
        rows,
        "switch to side by side (first time)",
        compare.side_button.click,
        side_by_side_shown,
    )
    timed(
        app,
        meter,
        rows,
        "switch back to stacked",
        compare.stacked_button.click,
        lambda: not compare.side_by_side_on and not compare.running,
    )
    timed(
        app,
        meter,
        rows,
        "switch to side by side again",
        compare.side_button.click,
        side_by_side_shown,
    )

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9

    def zoom():
        for i in range(ZOOM_FRAMES):
            camera.zoom *= 1.1 if i < ZOOM_FRAMES // 2 else 1 / 1.1
            process(app)

    # every zoom step is one draw of the whole scene: the least any gap that redraws it costs
    timed(app, meter, rows, f"zoom side by side, {ZOOM_FRAMES} frames", zoom, lambda: True)
    timed(
        app,
        meter,
        rows,
        "switch back to stacked again",
        compare.stacked_button.click,
        lambda: not compare.side_by_side_on and not compare.running,
    )
    timed(
        app,
        meter,
        rows,
        f"zoom, {ZOOM_FRAMES} frames, {args.zoom_explanations} explanations",
        zoom,
        lambda: True,
    )

    # "Run all" on an image nothing was computed for yet (no remembered explanation, pixel
    # size or faithfulness input): the methods' own cost, with the models loaded
    other = tmp / "SOB_M_DC-phantom-100-002.png"
    Image.fromarray(make_phantom("invasive", preset="breakhis", seed=321).image).save(other)
    [second] = viewer.open(other, plugin="histoview")
    process(app)
    compare.image_choice.value = second
    timed(
        app,
        meter,
        rows,
        "Run all methods, another image (nothing cached)",
        lambda: compare.run_all(then_side_by_side=False),
        lambda: not compare.running,
    )

    worst = max(gap for _, _, gap, _ in rows)
    print(f"\nlongest event-loop gap over all actions: {worst * 1000:.0f} ms (goal <= 100 ms)")
    frames = {name: wall / ZOOM_FRAMES for name, wall, _, _ in rows if name.startswith("zoom")}
    print(
        "one draw of the scene (a zoom frame), the floor of any gap that redraws it: "
        + ", ".join(f"{name.split(',')[0]}: {t * 1000:.0f} ms" for name, t in frames.items())
    )
    win, canvas = viewer.window._qt_window.size(), viewer.window._qt_viewer.canvas.size
    print(f"window {win.width()} x {win.height()}, canvas {canvas[1]} x {canvas[0]} px")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
