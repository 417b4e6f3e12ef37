"""Small Qt settings shared by the docks: long texts wrap or shorten and pictures scale down
instead of widening the dock (a dock as wide as its longest model name leaves the canvas a
strip, and a dock wider than its room hides its right edge behind a scroll bar), and a
dock's content scrolls rather than growing the window (:class:`DockContainer`)."""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QComboBox, QLabel, QScrollArea, QSizePolicy, QWidget

#: characters a drop-down shows before its width stops growing (the full text is in the list)
COMBO_CHARS = 16


def compact(*combos, chars: int = COMBO_CHARS) -> None:
    """magicgui ComboBoxes that stay ``chars`` characters wide whatever their choices; the
    open list shows full names and the selection's full name is the tooltip."""
    for combo in combos:
        native = combo.native
        native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        native.setMinimumContentsLength(chars)
        native.currentTextChanged.connect(native.setToolTip)
        native.setToolTip(native.currentText())


def wrapping(*labels, min_width: int = 200) -> None:
    """magicgui Labels whose long lines wrap at the dock's width, left-aligned from the top,
    rather than widening the dock."""
    for label in labels:
        native = label.native
        native.setWordWrap(True)
        native.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        native.setMinimumWidth(min_width)


def scrolling(widget: QWidget) -> QScrollArea:
    """``widget`` in a vertical scroll area that resizes it to its width."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(widget)
    return area


class DockContainer(Container):
    """A magicgui container that napari docks inside its scroll area.

    napari docks a magicgui widget's ``native``, the widget holding the layout, so the scroll
    area of ``Container(scrollable=True)`` is left out and a dock is never shorter than its
    content: four docks stacked on one side then need ~1,800 px and push the window past a
    laptop's screen. Here ``native`` is the scroll area itself (magicgui's
    ``root_native_widget``): a dock squeezed by others scrolls instead.
    """

    def __init__(self, **kwargs):
        super().__init__(scrollable=True, **kwargs)
        share_side_evenly(self.root_native_widget)  # once docked: not squeezed by the others
        # the scroll area fills the dock; the rows stay packed at the top (napari adds this
        # stretch itself only to a dock whose widget does not expand)
        self._widget._layout.addStretch(1)

    @property
    def native(self):
        return self.root_native_widget


class FittedPicture(QLabel):
    """A label showing a picture at most as wide as the label (scaled down, aspect kept),
    so that a figure never makes its dock wider than the dock's room; text until
    :meth:`set_picture` is called."""

    def __init__(self, text: str = "", min_width: int = 120):
        super().__init__(text)
        self._picture, self._fitted = None, None
        self._min_width = min_width
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)

    def set_picture(self, pixmap) -> None:
        self._picture, self._fitted = pixmap, None
        self.setText("")
        self._fit()

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        return QSize(min(hint.width(), self._min_width), hint.height())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        picture = self._picture
        if picture is None or picture.isNull():
            return
        width = max(1, min(self.width(), picture.width()))
        if self._fitted == width:  # this picture, already scaled to this width
            return
        self._fitted = width
        scaled = picture.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
        self.setPixmap(scaled)
        self.setMinimumHeight(scaled.height())


def share_side_evenly(widget: QWidget) -> None:
    """Once napari has docked ``widget`` (a few event-loop turns later): histoview's docks
    stacked on its side of the window share their height evenly. Qt otherwise gives a new dock
    the room its content asks for, and the training dock's tabs left an explain dock above it
    137 px, its Explain button scrolled out of sight."""
    _share_when_docked(widget, tries=60)


def _share_when_docked(widget: QWidget, tries: int) -> None:
    """:func:`_share` once ``widget`` sits in a shown dock; looked for every 50 ms, ``tries``
    times (napari shows the dock a few event-loop turns after making the widget, later on a
    busy machine)."""
    from qtpy.QtCore import QTimer

    def attempt():
        try:
            done = _share(widget)
        except RuntimeError:  # closed meanwhile
            return
        if not done and tries > 1:
            _share_when_docked(widget, tries - 1)

    QTimer.singleShot(50, attempt)


def _share(widget: QWidget) -> bool:
    """Share the height of ``widget``'s side among its docks; False if it is not docked and
    shown yet."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or not dock.isVisible():
        return False
    if dock.isFloating():
        return True
    area = window.dockWidgetArea(dock)
    docks = [
        d
        for d in window.findChildren(QDockWidget)
        if d.isVisible()
        and not d.isFloating()
        and window.dockWidgetArea(d) == area
        and not window.tabifiedDockWidgets(d)  # a tab shares its place, not the height
        and d.windowTitle().endswith("(histoview)")  # napari's own docks keep their sizes
    ]
    if len(docks) >= 2:
        docks.sort(key=lambda d: d.y())
        height = sum(d.height() for d in docks)
        window.resizeDocks(docks, [height // len(docks)] * len(docks), Qt.Orientation.Vertical)
    return True
