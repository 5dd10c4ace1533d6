"""NONMEM-format datasets: reading, validation and the event table."""

from .events import EventTable, build_event_table
from .reader import Dataset, read_dataset
from .schema import DatasetError

__all__ = ["Dataset", "DatasetError", "EventTable", "build_event_table", "read_dataset"]
