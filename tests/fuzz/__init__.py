"""Fuzzing helpers: the isolated CLI runner (runner.py), input mutators (mutate.py) and the
seeded case lists (cases.py) used by tests/test_fuzz.py and tools/dev/gen_bad_inputs_doc.py."""
