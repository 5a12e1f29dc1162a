"""Small reusable building blocks (layers, solvers) used by the methods."""
