"""The bottom layer: process-level services (locks, devices, progress) that every other layer may use."""
