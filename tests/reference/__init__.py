"""Independent references that the tests compare landmarknet with (nothing here imports it)."""
