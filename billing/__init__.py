"""Metering and billing of GPU-seconds per function."""
