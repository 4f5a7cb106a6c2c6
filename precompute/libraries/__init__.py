"""Task libraries: readers that turn a source's files into uniform :class:`TaskSpec` records."""
from .base import Record, TaskSpec, load_splits, task_data

__all__ = ["Record", "TaskSpec", "load_splits", "task_data"]
