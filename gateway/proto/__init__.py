"""Generated from schema/ by schema/generate.py; never edit by hand."""
