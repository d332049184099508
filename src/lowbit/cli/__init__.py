"""The ``lowbit`` command line (thin wrappers over the library)."""
