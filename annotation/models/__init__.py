"""Pose-estimation networks implemented for annotation (Pi3 / Pi3X)."""
