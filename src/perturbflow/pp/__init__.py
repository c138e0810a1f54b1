"""scanpy-style pp functions."""
