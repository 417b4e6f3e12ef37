"""Small Qt settings shared by the docks: long texts wrap or shorten instead of widening the
dock (a dock as wide as its longest model name leaves the canvas a strip)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QSizePolicy

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
