"""Helpers shared by tests: synthetic data and fakes."""
