"""Paper-size rehearsal: random-weight encoders, real-shape synthetic data."""
