"""Command-line interfaces: thin Typer layers over the Python API."""
