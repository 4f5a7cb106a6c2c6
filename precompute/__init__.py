"""Images -> numbers: probe networks, TASK2VEC embeddings, task distances.

Public API::

    from precompute import embed, distances
    e = embed("path/to/task", probe="efficientnet_lite0", method="montecarlo")
"""
__version__ = "0.1.0"

from .errors import Task2VecError  # noqa: E402
from .task2vec import EmbedConfig, TaskEmbedding, embed, embed_methods  # noqa: E402
from . import distances  # noqa: E402

__all__ = ["Task2VecError", "EmbedConfig", "TaskEmbedding", "embed", "embed_methods", "distances",
           "__version__"]
