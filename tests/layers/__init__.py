"""Tests of landmarknet.layers: one file per family (test_<family>.py mirrors layers/<family>.py),
shared checkers (checker.py), OpenCV batteries (test_opencv_reference.py) and the registry battery
over every registered type (test_registry_battery.py, configs.py)."""
