"""Small utilities shared by the library and the entry scripts."""
