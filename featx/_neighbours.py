"""The k-NN head's classifier: scikit-learn's, with as many neighbours as there are.

A private module (it imports scikit-learn at the top, and ``featx.heads`` must not) with
a public name, so that a pickled head finds its class again.
"""

from __future__ import annotations

from typing import Any

from sklearn.neighbors import KNeighborsClassifier

__all__ = ["CappedKNeighborsClassifier"]


class CappedKNeighborsClassifier(KNeighborsClassifier):
    """``KNeighborsClassifier`` that asks for at most as many neighbours as it was fitted on.

    Plain scikit-learn raises when ``n_neighbors`` exceeds the training rows, which an
    inner cross-validation fold of a small class-per-folder set easily has (a grid of
    5, 10, 20 neighbours on 18 images). Capped, ``n_neighbors=20`` on 18 images votes
    with all 18, which is what that setting means there. Parameters are scikit-learn's.

    Examples
    --------
    >>> import numpy as np
    >>> from featx._neighbours import CappedKNeighborsClassifier
    >>> X = np.array([[0.0, 1.0], [0.1, 1.0], [1.0, 0.0]])
    >>> knn = CappedKNeighborsClassifier(n_neighbors=10, weights="distance").fit(X, [0, 0, 1])
    >>> knn.predict([[0.0, 0.9]]).tolist()
    [0]
    """

    def kneighbors(self, X: Any = None, n_neighbors: int | None = None, return_distance=True):
        wanted = self.n_neighbors if n_neighbors is None else n_neighbors
        available = self.n_samples_fit_ - (1 if X is None else 0)  # X=None leaves itself out
        return super().kneighbors(X, max(1, min(wanted, available)), return_distance)
