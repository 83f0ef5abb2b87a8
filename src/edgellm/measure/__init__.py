"""Speed, memory and machine measurements (docs/design.md §4)."""

from .latency import SpeedResult, Stat, measure_paired, measure_speed
from .machine import machine_info, measure_bandwidth, measure_matmul
from .memory import bench

__all__ = ["SpeedResult", "Stat", "bench", "machine_info", "measure_bandwidth", "measure_matmul", "measure_paired",
           "measure_speed"]
