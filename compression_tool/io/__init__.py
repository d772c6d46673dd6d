"""Foundations: user errors, atomic output writes, checkpoint reading (weights only)."""
