"""matplotlib's backend in a stateful python session (MPLBACKEND=module://isol8_mpl_backend).

Figures are drawn with Agg; ``plt.show()`` hands every open figure to the
kernel as a display (``image/png`` and ``text/plain``) and closes it. Figures
left open at the end of a cell are shown the same way by the kernel.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(*args: Any, **kwargs: Any) -> None:
    import isol8_kernel  # the running kernel (python_kernel.py registers itself under this name)

    if isol8_kernel.KERNEL is not None:
        isol8_kernel.KERNEL.show_figures()
