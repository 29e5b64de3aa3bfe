"""Thin RecBole ``Trainer`` subclasses for multi-stage schedules."""
