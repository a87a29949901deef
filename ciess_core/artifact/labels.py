"""External id -> internal id, kept as numpy arrays instead of a dict.

A dict of Python strings costs about 150 bytes an id (Yelp2018's 31,668 users: 4.9 MB); a sorted
unicode array and an int32 permutation cost 4 bytes a character plus 4, and a lookup is a binary
search (:func:`numpy.searchsorted`).

Numpy's unicode arrays drop trailing NUL characters, so ``"a\\x00"`` would be stored, and searched
for, as ``"a"``: a label that ends in NUL is never known here, as it is not in a dict built from
the same array.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ciess_core.errors import ArtifactError

IdArray = npt.NDArray[np.int64]

_NUL = "\x00"


class LabelIndex:
    """Internal ids (positions in ``labels``) of distinct external id strings.

    Args:
        labels: (n,) unicode array of distinct ids; position = internal id.

    Raises:
        ArtifactError: ``labels`` is not 1-D unicode, holds a duplicate or more than 2³¹ ids.
    """

    def __init__(self, labels: npt.NDArray[np.str_]) -> None:
        if labels.ndim != 1 or labels.dtype.kind != "U":
            raise ArtifactError(
                f"ids must be a 1-D unicode array, got {labels.dtype} of shape {labels.shape}"
            )
        if labels.size > np.iinfo(np.int32).max:
            raise ArtifactError(f"{labels.size} ids: more than an int32 permutation holds")
        order = np.argsort(labels, kind="stable")
        self._sorted: npt.NDArray[np.str_] = labels[order]
        if self._sorted.size > 1 and bool((self._sorted[1:] == self._sorted[:-1]).any()):
            repeated = self._sorted[1:][self._sorted[1:] == self._sorted[:-1]][:3].tolist()
            raise ArtifactError(f"ids are not unique: {repeated} repeat")
        self._internal = order.astype(np.int32)  # sorted position -> internal id
        self._size = int(labels.size)

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes of the two arrays (the sorted labels and the permutation)."""
        return int(self._sorted.nbytes + self._internal.nbytes)

    def lookup(self, labels: list[str]) -> IdArray:
        """(len(labels),) internal ids of ``labels``, -1 for an unknown one (repeats allowed)."""
        if len(labels) == 1:  # the service's usual request: no array round trip
            return np.array([self.find(labels[0])], dtype=np.int64)
        result = np.full(len(labels), -1, dtype=np.int64)
        if not labels or self._size == 0:
            return result
        query = np.asarray(labels, dtype=np.str_)
        positions = np.minimum(self._sorted.searchsorted(query), self._size - 1)
        found = self._sorted[positions] == query
        if _NUL in "".join(labels):  # rare: see the module's docstring
            found &= np.asarray([not label.endswith(_NUL) for label in labels], dtype=bool)
        result[found] = self._internal[positions[found]]
        return result

    def find(self, label: str) -> int:
        """Internal id of one label, -1 if unknown."""
        position = self._sorted.searchsorted(label)
        if position < self._size and self._sorted.item(position) == label:
            return self._internal.item(position)
        return -1
