"""Tests of the reference device."""
