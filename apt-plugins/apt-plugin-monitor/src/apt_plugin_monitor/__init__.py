"""Gradient monitor for APT: per-layer gradient and weight norms, update-to-weight ratios,
vanishing/exploding flags and the module behind the first NaN (see README.md)."""

from apt_plugin_monitor.plugin import GradientMonitor, MonitorConfig

__all__ = ["GradientMonitor", "MonitorConfig"]
