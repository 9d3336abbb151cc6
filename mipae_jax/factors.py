"""Factor groups: which columns of a factor table form one categorical variable.

A dataset declares its groups (`VideoSource.factor_groups`) and the metrics read them
(`metrics.probe`, `metrics.mig.probe_mig`). The type lives here, outside both packages,
so that the metrics need not import the data package to name it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FactorGroup:
  """Factor columns that form one categorical variable, for the MIG's probes.

  A dataset lists its content and pose factors as groups that are independent of each
  other in the frames `sample_static` draws (e.g. one sprite's (shape, scale,
  orientation), which the split draws as one combination; x; y; the front sprite).

  Attributes:
    name: shown in reports.
    columns: indices into the content or pose factor table.
    ordinal: one column of grid levels (positions): the probe may use their order.
    levels: number of levels of an ordinal group (None: from the data).
    entropy: H of the group (nats) under `sample_static`'s population, when known.
    ceiling: I(group; image) (nats), < entropy where distinct values render to the same
      image (a square turned by 90 degrees, the front order of sprites that do not
      overlap); None when every value is visible (then the ceiling is the entropy).
  """
  name: str
  columns: tuple[int, ...]
  ordinal: bool = False
  levels: int | None = None
  entropy: float | None = None
  ceiling: float | None = None
