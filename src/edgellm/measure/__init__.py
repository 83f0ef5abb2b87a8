"""Speed, memory and machine measurements (docs/design.md §4)."""

from .latency import SpeedResult, Stat, measure_paired, measure_speed
from .machine import machine_info, measure_bandwidth, measure_matmul
from .memory import BenchConfig, BenchResult, bench

__all__ = ["BenchConfig", "BenchResult", "SpeedResult", "Stat", "bench", "machine_info", "measure_bandwidth",
           "measure_matmul", "measure_paired", "measure_speed"]
