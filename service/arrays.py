"""Array type aliases shared by the numeric modules (annotations only)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArr = npt.NDArray[np.intp]
I64 = npt.NDArray[np.int64]
