"""Small helpers shared by the library and the command line (no torch at import time)."""
