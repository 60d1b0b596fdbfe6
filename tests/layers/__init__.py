"""Tests of landmarknet.layers: the registry battery over every registered type."""
