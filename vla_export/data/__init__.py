"""Inputs: the shared preprocessing, the seeded synthetic source, episodes and tokenisation."""
